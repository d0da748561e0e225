"""Wake from zero on the local backend and on the Ray backend, side by side.

A scaled-to-zero command deployment (`python -m http.server`) is woken by a GET
through the router; the figure is request sent to response received. With Ray,
each wake also creates the replica's actor (a Ray worker process) on a Ray
instance started on this machine; the difference is what Ray adds to a cold start.

    python benchmarks/ray_backend.py [--runs 5] [--ray-address ADDR]

Everything runs in a temporary TRAMONTANE_HOME with a fresh SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from fastapi import FastAPI

from tramontane.control.backends import Backend, LocalBackend
from tramontane.control.backends.ray import RayBackend
from tramontane.control.install import install
from tramontane.control.plane import ControlPlane
from tramontane.control.scheduler import NodeCapacity
from tramontane.store import open_store
from tramontane.tenancy import CLI, Capability, Tenancy, directory, keys

# Listens on $HOST: a Ray node's address, which the control plane connects to.
COMMAND = f'exec {sys.executable} -m http.server $PORT --bind "${{HOST:-127.0.0.1}}"'


async def wakes(backend: Backend, capacity: NodeCapacity, runs: int) -> list[float]:
    home = Path(tempfile.mkdtemp(prefix="tramontane-ray-bench-"))
    store = open_store(f"sqlite:///{home / 'db.sqlite'}")
    tenancy = Tenancy(store, home=home)
    with store.session() as session:
        workspace = directory.create_workspace(session, directory.create_organisation(session, "bench", CLI), "b", CLI)
        key = keys.create_key(
            session,
            tenancy.pepper,
            workspace,
            name="bench",
            actor=CLI,
            capabilities=frozenset({Capability.DEPLOY, Capability.INFERENCE}),
        )
    plane = ControlPlane(store, backend=backend, capacity=capacity, home=home, reconcile_interval_s=0.5)
    await plane.start()
    app = FastAPI()
    tenancy.install(app)
    install(app, plane, tenancy)
    headers = {"Authorization": f"Bearer {key.plaintext}"}
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://b", headers=headers, timeout=120)
    timings = []
    try:
        async with client:
            spec = {
                "name": "web",
                "command": COMMAND,
                "resources": {"cpu": 0.5, "memory_mb": 128},
                "health_check": {"type": "tcp", "interval_s": 1},
                "scaling": {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after_s": 3600},
            }
            (await client.post("/v1/deployments", json=spec)).raise_for_status()
            for _ in range(runs):
                await plane.scale(workspace.id, "web", 0)
                started = time.perf_counter()
                (await client.get("/serve/web/")).raise_for_status()
                timings.append(time.perf_counter() - started)
    finally:
        await plane.stop()
        store.close()
        shutil.rmtree(home, ignore_errors=True)
    return timings


def summary(name: str, timings: list[float]) -> str:
    return (
        f"{name:>6}: wake from zero p50 {statistics.median(timings) * 1000:.0f} ms "
        f"(min {min(timings) * 1000:.0f}, max {max(timings) * 1000:.0f}, {len(timings)} runs)"
    )


async def main(args: argparse.Namespace) -> None:
    local = await wakes(LocalBackend(), NodeCapacity.detect(), args.runs)
    ray_backend = RayBackend(args.ray_address)
    ray = await wakes(ray_backend, ray_backend.capacity(), args.runs)
    print(summary("local", local))
    print(summary("ray", ray))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ray-address", default=None, help="A running Ray cluster; default: start one here.")
    asyncio.run(main(parser.parse_args()))
