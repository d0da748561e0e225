"""Control-plane latencies, through a real HTTP server on loopback:

- wake from zero to first token of the default model (`tramontane up` replica,
  streaming chat request through the router), side by side:
    light sleep: the replica's process was frozen with its weights, KV cache freed;
    deep sleep: no process; a new one starts from a standby interpreter (torch and
      the server imported) and maps the prepared (quantized) model;
    first start: neither (a fresh interpreter loads and quantizes the GGUF), as
      every wake was before light sleep and prepared models;
- the same for a command deployment (`python -m http.server`), first byte;
- router overhead: GETs straight to a replica vs through the router (API key
  check included), interleaved so that machine noise hits both alike.

    python benchmarks/control_plane.py [--light-runs 10] [--deep-runs 5] [--requests 400]

Everything runs in a temporary TRAMONTANE_HOME with a fresh SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from percentiles import summary

from tramontane.control.backends import LocalBackend
from tramontane.control.install import install
from tramontane.control.plane import ControlPlane
from tramontane.engine.defaults import default_chat_model_path
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy

# The replica for the router figures: uvicorn (as our model replicas) with a bare ASGI app.
ECHO_APP = """
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ms(seconds: list[float]) -> str:
    return summary(seconds, scale=1000)


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _first_byte(client: httpx.AsyncClient, name: str) -> None:
    async with client.stream("GET", f"/serve/{name}/") as response:
        response.raise_for_status()
        async for _ in response.aiter_raw():
            return


async def _first_token(client: httpx.AsyncClient, name: str) -> None:
    body = {"model": name, "stream": True, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    async with client.stream("POST", "/serve/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"content"' in line:
                return
    raise RuntimeError("the model streamed no token")


async def _wakes(
    plane: ControlPlane,
    workspace: str,
    name: str,
    runs: int,
    send: Callable[[], Awaitable[None]],
    settled: Callable[[], bool],
) -> list[float]:
    """Scales `name` to zero, waits until it has settled asleep, then times `send`."""
    timings = []
    for _ in range(runs):
        await plane.scale(workspace, name, 0)
        await _until(lambda: not plane.get(workspace, name).live() and settled(), f"{name} asleep")
        started = time.perf_counter()
        await send()
        timings.append(time.perf_counter() - started)
    return timings


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="tramontane-control-bench-"))
    store = open_store(f"sqlite:///{home / 'db.sqlite'}")
    tenancy = Tenancy(store, home=home)
    ws, key = tenancy.create_tenant("bench", frozenset({Capability.DEPLOY, Capability.INFERENCE}))
    backend = LocalBackend()
    plane = ControlPlane(store, backend=backend, home=home, reconcile_interval_s=0.5)
    await plane.start()
    app = FastAPI()
    tenancy.install(app)
    install(app, plane, tenancy)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    (home / "echo_app.py").write_text(ECHO_APP)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300) as client:
            await _until(lambda: server.started, "the server")

            async def deploy(name: str, light_sleep_s: float, **fields: object) -> None:
                scaling = {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after_s": 3600}
                body = {"name": name, "scaling": {**scaling, "light_sleep_s": light_sleep_s}, **fields}
                (await client.post("/v1/deployments", json=body)).raise_for_status()

            def asleep(name: str) -> Callable[[], bool]:
                return lambda: all(r.slept_at is not None for r in plane.get(ws, name).sleeping())

            print("Wake from zero (scaled to zero, then one request):")
            web = {
                "command": f"{sys.executable} -m http.server $PORT --bind 127.0.0.1",
                "health_check": {"type": "tcp"},
            }
            await deploy("web-light", 3600, **web)
            await deploy("web-deep", 0, **web)
            await _first_byte(client, "web-light")
            light = await _wakes(plane, ws, "web-light", args.light_runs, lambda: _first_byte(client, "web-light"),
                                 asleep("web-light"))
            deep = await _wakes(plane, ws, "web-deep", args.deep_runs, lambda: _first_byte(client, "web-deep"),
                                lambda: True)
            print(f"  command, first byte   light sleep {_ms(light)}")
            print(f"                        deep sleep  {_ms(deep)}")

            model = {
                "kind": "model",
                "model": default_chat_model_path(),
                "resources": {"cpu": 1, "memory_mb": 2048},
                "health_check": {"type": "http", "path": "/health", "grace_period_s": 600},
            }
            await deploy("smol-light", 3600, **model)
            await deploy("smol-deep", 0, **model)
            started = time.perf_counter()
            await _first_token(client, "smol-deep")
            first_start = time.perf_counter() - started
            await _first_token(client, "smol-light")
            light = await _wakes(plane, ws, "smol-light", args.light_runs, lambda: _first_token(client, "smol-light"),
                                 asleep("smol-light"))
            # Deep sleep's steady state: the standby interpreter is ready when the request comes.
            deep = await _wakes(plane, ws, "smol-deep", args.deep_runs, lambda: _first_token(client, "smol-deep"),
                                lambda: backend.standby.ready)
            print(f"  default model, token  light sleep {_ms(light)}")
            print(f"                        deep sleep  {_ms(deep)}")
            print(f"                        first start {_ms([first_start])}  (no standby, no prepared model)")
            await plane.scale(ws, "smol-light", 0)
            replica = plane.get(ws, "smol-light").sleeping()[0]
            await _until(lambda: replica.slept_at is not None, "smol-light asleep")
            print(f"  a sleeping default-model replica holds {replica.held_memory_mb} MiB resident (no CPU, no KV)")

            echo = {
                "command": f"{sys.executable} -m uvicorn --app-dir {home} echo_app:app --port $PORT --log-level error",
                "health_check": {"type": "tcp"},
                "scaling": {"min_replicas": 1, "max_replicas": 1},
            }
            (await client.post("/v1/deployments", json={"name": "echo", **echo})).raise_for_status()
            deployment = plane.get(ws, "echo")
            await _until(lambda: deployment.pick() is not None, "the echo replica")
            replica = deployment.pick()
            assert replica is not None
            urls = {"direct": replica.url + "/", "router": "/serve/echo/"}
            timings: dict[str, list[float]] = {"direct": [], "router": []}
            cpu = {"direct": 0.0, "router": 0.0}
            for i in range(args.requests + 50):
                for way, url in urls.items():
                    started, cpu_started = time.perf_counter(), time.process_time()
                    (await client.get(url)).raise_for_status()
                    if i >= 50:  # warm-up
                        timings[way].append(time.perf_counter() - started)
                        cpu[way] += time.process_time() - cpu_started
            added = statistics.median(timings["router"]) - statistics.median(timings["direct"])
            # The client and the router share this process, so the CPU difference is the router's own work.
            router_cpu = (cpu["router"] - cpu["direct"]) / args.requests
            print(f"Router ({args.requests} sequential GETs each way, interleaved):")
            print(f"  direct to the replica {_ms(timings['direct'])}")
            print(f"  through the router    {_ms(timings['router'])}")
            print(f"  added by the router   p50 {added * 1000:8.2f} ms  (router CPU {router_cpu * 1000:.2f} ms/req)")
    finally:
        server.should_exit = True
        await serving
        await plane.stop()
        store.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light-runs", type=int, default=10)
    parser.add_argument("--deep-runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400)
    asyncio.run(main(parser.parse_args()))
