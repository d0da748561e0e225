"""Control-plane latencies, through a real HTTP server on loopback:

- wake (command): a scaled-to-zero command deployment (`python -m http.server`),
  request sent to first response byte;
- wake (model): a scaled-to-zero model deployment (`tramontane up` with the
  default chat model), streaming chat request sent to the first token;
- router overhead: p50 of a GET through the router minus p50 straight to the
  replica (auth included: the router checks the API key on every request).

    python benchmarks/control_plane.py [--runs 5] [--model-runs 3] [--requests 300]

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
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from tramontane.control.install import install
from tramontane.control.plane import ControlPlane
from tramontane.engine.defaults import default_chat_model_path
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wake(client: httpx.AsyncClient, plane: ControlPlane, workspace: str, name: str, send) -> float:
    await plane.scale(workspace, name, 0)
    # A replica still finishing the previous (abandoned) stream is busy, so the
    # scale-down leaves it to the reconcile loop: wait until it is really gone.
    for _ in range(600):
        if not plane.get(workspace, name).live():
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"{name} did not scale to zero")
    started = time.perf_counter()
    await send(client)
    return time.perf_counter() - started


async def _first_byte(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/serve/web/") as response:
        response.raise_for_status()
        async for _ in response.aiter_raw():
            return


async def _first_token(client: httpx.AsyncClient) -> None:
    body = {"model": "smol", "stream": True, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    async with client.stream("POST", "/serve/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"content"' in line:
                return
    raise RuntimeError("the model streamed no token")


async def _p50(client: httpx.AsyncClient, url: str, requests: int) -> float:
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        (await client.get(url)).raise_for_status()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[requests // 10 :])


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="tramontane-control-bench-"))
    store = open_store(f"sqlite:///{home / 'db.sqlite'}")
    tenancy = Tenancy(store, home=home)
    workspace_id, key = tenancy.create_tenant("bench", frozenset({Capability.DEPLOY, Capability.INFERENCE}))
    plane = ControlPlane(store, home=home, reconcile_interval_s=0.5)
    await plane.start()
    app = FastAPI()
    tenancy.install(app)
    install(app, plane, tenancy)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300) as client:
            while not server.started:
                await asyncio.sleep(0.01)
            fast_checks = {"type": "tcp", "interval_s": 1}
            scaling = {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after_s": 3600}
            web = {
                "name": "web",
                "command": f"{sys.executable} -m http.server $PORT --bind 127.0.0.1",
                "health_check": fast_checks,
                "scaling": scaling,
            }
            (await client.post("/v1/deployments", json=web)).raise_for_status()
            wakes = [await _wake(client, plane, workspace_id, "web", _first_byte) for _ in range(args.runs)]
            print(
                f"wake from zero, command (http.server): p50 {statistics.median(wakes) * 1000:.0f} ms "
                f"over {args.runs} runs (min {min(wakes) * 1000:.0f}, max {max(wakes) * 1000:.0f})"
            )

            replica = plane.get(workspace_id, "web").pick()
            assert replica is not None
            direct = await _p50(client, replica.url + "/", args.requests)
            routed = await _p50(client, "/serve/web/", args.requests)
            print(
                f"router: p50 {routed * 1000:.2f} ms vs direct {direct * 1000:.2f} ms "
                f"-> added {(routed - direct) * 1000:.2f} ms ({args.requests} sequential GETs)"
            )

            if args.model_runs:
                model = {
                    "name": "smol",
                    "kind": "model",
                    "model": default_chat_model_path(),
                    "resources": {"cpu": 1, "memory_mb": 2048},
                    "health_check": {"type": "http", "path": "/health", "grace_period_s": 300},
                    "scaling": scaling,
                }
                (await client.post("/v1/deployments", json=model)).raise_for_status()
                tokens = [
                    await _wake(client, plane, workspace_id, "smol", _first_token) for _ in range(args.model_runs)
                ]
                print(
                    f"wake from zero, default model (tramontane up): first token p50 "
                    f"{statistics.median(tokens):.2f} s over {args.model_runs} runs "
                    f"(min {min(tokens):.2f}, max {max(tokens):.2f})"
                )
    finally:
        server.should_exit = True
        await serving
        await plane.stop()
        store.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model-runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    asyncio.run(main(parser.parse_args()))
