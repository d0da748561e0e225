"""What one gateway process carries through the deployments' router: requests per
second and the gateway's CPU per request, with `--concurrency` clients in flight.

One gateway (control plane, key check, router; uvicorn, one process) in this
process, serving a command deployment whose one replica is a bare uvicorn ASGI
app answering "ok"; the load comes from a separate process (httpx, keep-alive
connections) so that the gateway's CPU time is its own. The store is SQLite by
default, or the PostgreSQL at `--database-url`. Every request carries a key, so
each one includes the key check (one indexed read); no limits are set on the
workspace (limits add write transactions: see benchmarks/auth_overhead.py).

    python benchmarks/gateway_capacity.py [--requests 3000] [--concurrency 32] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn
from control_plane import ECHO_APP, _free_port, _until
from fastapi import FastAPI

from tramontane.control.backends import LocalBackend
from tramontane.control.install import install
from tramontane.control.plane import ControlPlane
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy

LOAD = """
import asyncio, json, sys, time
import httpx

async def main(url, key, requests, concurrency):
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60) as client:
        latencies, errors, left = [], 0, requests

        async def worker():
            nonlocal errors, left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        print(json.dumps({"wall_s": time.perf_counter() - started, "latencies": latencies, "errors": errors}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="tramontane-gateway-bench-"))
    store = open_store(args.database_url or f"sqlite:///{home / 'db.sqlite'}")
    tenancy = Tenancy(store, home=home)
    ws, key = tenancy.create_tenant(f"bench-{time.monotonic_ns()}", frozenset({Capability.DEPLOY, Capability.INFERENCE}))
    plane = ControlPlane(store, backend=LocalBackend(), home=home, reconcile_interval_s=1.0)
    await plane.start()
    app = FastAPI()
    tenancy.install(app)
    install(app, plane, tenancy)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    (home / "echo_app.py").write_text(ECHO_APP)
    try:
        await _until(lambda: server.started, "the server")
        echo = {
            "name": "echo",
            "command": f"{sys.executable} -m uvicorn --app-dir {home} echo_app:app --port $PORT --log-level error",
            "health_check": {"type": "tcp"},
            "scaling": {"min_replicas": 1, "max_replicas": 1},
        }
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            created = await client.post("/v1/deployments", json=echo, headers={"Authorization": f"Bearer {key}"})
            created.raise_for_status()
        deployment = plane.get(ws, "echo")
        await _until(lambda: deployment.pick() is not None, "the echo replica")
        url = f"http://127.0.0.1:{port}/serve/echo/"
        command = [sys.executable, "-c", LOAD, url, key]
        # A short warm-up, then the measured run.
        warm = await asyncio.to_thread(subprocess.run, [*command, "200", str(args.concurrency)],
                                       capture_output=True, text=True)
        if warm.returncode != 0:
            raise SystemExit(f"the load generator failed: {warm.stderr[-2000:]}")
        cpu_started = time.process_time()
        done = await asyncio.to_thread(subprocess.run, [*command, str(args.requests), str(args.concurrency)],
                                       capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the load generator failed: {done.stderr[-2000:]}")
        cpu = time.process_time() - cpu_started
        result = json.loads(done.stdout)
        latencies = sorted(result["latencies"])
        p50, p99 = latencies[len(latencies) // 2], latencies[int(0.99 * len(latencies)) - 1]
        print(f"store {store.engine.dialect.name}, {args.requests} GETs through the router, "
              f"{args.concurrency} in flight, {result['errors']} errors")
        print(f"  {args.requests / result['wall_s']:.0f} requests/s; latency p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms; gateway CPU {cpu / args.requests * 1000:.2f} ms per request")
    finally:
        server.should_exit = True
        await serving
        await plane.stop()
        store.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", default=None)
    asyncio.run(main(parser.parse_args()))
