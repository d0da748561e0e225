"""Autoscaling on requests per second and on CPU, driven through ramps on a manual
clock with the memory backend: the replica count follows the load up at once,
comes back down after the stabilisation window, and does not flap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tramontane.control.backends.memory import MemoryBackend
from tramontane.control.clock import ManualClock, settle
from tramontane.control.deployment import Deployment
from tramontane.control.plane import ControlPlane
from tramontane.control.scheduler import NodeCapacity
from tramontane.control.spec import DeploymentSpec
from tramontane.control.states import ReplicaState
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy


class Ramp:
    def __init__(self, plane: ControlPlane, clock: ManualClock, backend: MemoryBackend, workspace: str):
        self.plane, self.clock, self.backend, self.workspace = plane, clock, backend, workspace

    async def create(self, **scaling: Any) -> Deployment:
        spec = DeploymentSpec.model_validate(
            {
                "name": "svc",
                "command": "serve",
                "resources": {"cpu": 1, "memory_mb": 64},
                "scaling": {"min_replicas": 1, "max_replicas": 4, "target_concurrency": 1000, **scaling},
            }
        )
        deployment = await self.plane.create(self.workspace, spec)
        await settle()
        return deployment

    async def second(self, deployment: Deployment, requests: int = 0, cpu_demand: float = 0.0) -> int:
        """One second: `requests` pass through the router's accounting and the
        running replicas share `cpu_demand` CPUs; then the reconcile loop runs.
        The live replica count after it."""
        for _ in range(requests):
            async with self.plane.acquire(deployment):
                pass
        running = [r for r in deployment.replicas.values() if r.state is ReplicaState.RUNNING]
        for replica in running:
            self.backend.replicas[replica.id].cpu += cpu_demand / len(running)
        await self.clock.advance(1)
        await self._reconciled()
        return len(deployment.live())

    async def _reconciled(self) -> None:
        # The pass samples CPU in a worker thread under the plane's lock: wait for it
        # in real time (bounded), which moves no time on the manual clock.
        deadline = time.monotonic() + 10
        await settle()
        while self.plane._lock.locked():
            assert time.monotonic() < deadline, "the reconcile pass did not finish"
            await asyncio.sleep(0.005)
            await settle()


@pytest.fixture
async def ramp(tmp_path: Path) -> AsyncIterator[Ramp]:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    workspace, _ = Tenancy(store, home=tmp_path).create_tenant("t", frozenset({Capability.DEPLOY}))
    clock, backend = ManualClock(), MemoryBackend()
    plane = ControlPlane(
        store, backend=backend, capacity=NodeCapacity(cpu=8, memory_mb=4096), home=tmp_path, clock=clock
    )
    await plane.start()
    try:
        yield Ramp(plane, clock, backend, workspace)
    finally:
        await plane.stop()
        store.close()


def changes(counts: list[int]) -> int:
    return sum(a != b for a, b in zip(counts, counts[1:], strict=False))


async def test_requests_per_second_ramp_up_and_down(ramp: Ramp) -> None:
    deployment = await ramp.create(target_requests_per_s=5, downscale_delay_s=20)
    # 2, 8, 14, 20 requests a second, 12 s each, then nothing.
    up = [await ramp.second(deployment, rate) for rate in (2, 8, 14, 20) for _ in range(12)]
    assert up[11] == 1  # 2/s: one replica is enough
    assert up[-1] == 4  # 20/s over 5/s per replica
    assert up == sorted(up), up  # only ever up while the rate rises
    assert changes(up) == 3, up  # 1 -> 2 -> 3 -> 4, no flapping

    down = [await ramp.second(deployment, 0) for _ in range(60)]
    # The rate falls over its 10 s window, but replicas stay for the 20 s window.
    assert down[:20] == [4] * 20, down
    assert down[-1] == 1  # min_replicas
    assert down == sorted(down, reverse=True) and changes(down) <= 3, down

    events = ramp.plane.events(ramp.workspace, "svc")
    scaled = [e.message for e in events if e.kind == "scaled"]
    assert scaled[0].startswith("scaled from 1 to 2 replicas") and "requests/s" in scaled[0]


async def test_noisy_rate_does_not_flap(ramp: Ramp) -> None:
    deployment = await ramp.create(target_requests_per_s=5, downscale_delay_s=15)
    # Bursts of 40 every 4 s, nothing in between: about 10 requests/s on average.
    counts = [await ramp.second(deployment, 40 if t % 4 == 0 else 0) for t in range(60)]
    settled = counts[20:]
    assert changes(settled) == 0, counts


async def test_cpu_ramp_up_and_down(ramp: Ramp) -> None:
    deployment = await ramp.create(target_cpu_percent=50, downscale_delay_s=10)
    await ramp.second(deployment)  # the first CPU sample
    # 1.6 CPUs of work: 160% on one replica, 40% each on four.
    up = [await ramp.second(deployment, cpu_demand=1.6) for _ in range(10)]
    assert up[-1] == 4 and up == sorted(up), up
    replicas = [r for r in deployment.replicas.values() if r.state is ReplicaState.RUNNING]
    assert all(r.cpu_percent == pytest.approx(40, abs=1) for r in replicas), [r.cpu_percent for r in replicas]
    # The work drops to 0.3 CPU: one replica at 30% is enough, after the window.
    down = [await ramp.second(deployment, cpu_demand=0.3) for _ in range(30)]
    assert down[:8] == [4] * 8 and down[-1] == 1, down
    assert changes(down) <= 3 and down == sorted(down, reverse=True), down
    assert any("CPU" in e.message for e in ramp.plane.events(ramp.workspace, "svc") if e.kind == "scaled")
