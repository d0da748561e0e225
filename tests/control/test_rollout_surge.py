"""Rollouts bounded by a surge, without processes: the memory backend plays the
replicas (a test says when each new one passes its health check) and a manual
clock moves time. After every step, the replicas up must stay within the
target plus `max_surge`, and those ready at or above the target less
`max_unavailable`: the deployment serves throughout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tramontane.control.backends.memory import MemoryBackend
from tramontane.control.clock import ManualClock, settle
from tramontane.control.deployment import Deployment
from tramontane.control.plane import ControlPlane
from tramontane.control.scheduler import NodeCapacity
from tramontane.control.spec import DeploymentSpec, Rollout
from tramontane.control.states import LIVE
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy


def spec(version: str, replicas: int, **rollout: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate(
        {
            "name": "web",
            "command": "serve",
            "env": {"VERSION": version},
            "resources": {"cpu": 1},
            "scaling": {"min_replicas": replicas, "max_replicas": 8},
            "health_check": {"grace_period_s": 20, "interval_s": 1},
            "rollout": rollout,
        }
    )


class Rig:
    def __init__(self, plane: ControlPlane, clock: ManualClock, backend: MemoryBackend, workspace: str):
        self.plane, self.clock, self.backend, self.workspace = plane, clock, backend, workspace

    async def step(self, seconds: float = 1.0) -> None:
        await self.clock.advance(seconds)
        await settle()

    def up(self, deployment: Deployment) -> list[Any]:
        """Replicas counted against the surge: live and not draining."""
        return [r for r in deployment.replicas.values() if r.state in LIVE and not r.draining]

    def ready(self, deployment: Deployment) -> int:
        return sum(r.ready and not r.draining for r in deployment.replicas.values())

    def pending(self, deployment: Deployment, revision: int) -> list[Any]:
        return [r for r in self.up(deployment) if r.revision == revision and not r.ready]

    def pass_checks(self, replicas: list[Any]) -> None:
        for replica in replicas:
            self.backend.replicas[replica.id].healthy = True

    async def roll(self, deployment: Deployment, limit: int, floor: int, revision: int = 2) -> list[int]:
        """Lets each new replica pass its check one step after it starts, until the
        rollout ends; checks the bounds at every step; the pending counts seen."""
        pendings = []
        for _ in range(60):
            if deployment.rolling_out is None:
                return pendings
            await self.step()
            assert len(self.up(deployment)) <= limit, [(r.revision, r.state) for r in self.up(deployment)]
            assert self.ready(deployment) >= floor
            pending = self.pending(deployment, revision)
            pendings.append(len(pending))
            self.pass_checks(pending)
        raise AssertionError("the rollout did not end")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    workspace, _ = Tenancy(store, home=tmp_path).create_tenant("t", frozenset({Capability.DEPLOY}))
    clock, backend = ManualClock(), MemoryBackend()
    capacity = NodeCapacity(cpu=16, memory_mb=65536)
    plane = ControlPlane(store, backend=backend, capacity=capacity, home=tmp_path, clock=clock)
    await plane.start()
    try:
        yield Rig(plane, clock, backend, workspace)
    finally:
        await plane.stop()
        store.close()


async def _serving(rig: Rig, replicas: int, **rollout: Any) -> Deployment:
    deployment = await rig.plane.create(rig.workspace, spec("1", replicas, **rollout))
    for _ in range(5):
        await rig.step()
    assert rig.ready(deployment) == replicas
    rig.backend.healthy_on_launch = False  # new replicas pass their checks when the test says
    return deployment


def _revisions(deployment: Deployment) -> list[int]:
    return sorted(r.revision for r in deployment.replicas.values())


async def test_one_new_replica_at_a_time_and_never_below_the_target(rig: Rig) -> None:
    deployment = await _serving(rig, 3)
    await rig.plane.update(rig.workspace, "web", spec("2", 3))
    pendings = await rig.roll(deployment, limit=4, floor=3)
    assert max(pendings) == 1 and pendings.count(1) >= 3  # one at a time, three in all
    assert deployment.revision == 2 and deployment.rollback_reason is None
    assert _revisions(deployment) == [2, 2, 2] and deployment.desired == 3
    assert sum(not r.stopped for r in rig.backend.replicas.values()) == 3  # every old process stopped


async def test_percentages_start_several_at_once_within_both_budgets(rig: Rig) -> None:
    # 4 wanted: a 50% surge is 2 more, 25% unavailable is 1 fewer ready.
    deployment = await _serving(rig, 4, max_surge="50%", max_unavailable="25%")
    await rig.plane.update(rig.workspace, "web", spec("2", 4, max_surge="50%", max_unavailable="25%"))
    pendings = await rig.roll(deployment, limit=6, floor=3)
    assert pendings[0] == 3  # two above the target and one in place of a retired old replica
    assert _revisions(deployment) == [2, 2, 2, 2]


async def test_a_scale_during_the_rollout_is_kept_by_the_new_revision(rig: Rig) -> None:
    deployment = await _serving(rig, 2)
    await rig.plane.update(rig.workspace, "web", spec("2", 2))
    await rig.step()
    await rig.plane.scale(rig.workspace, "web", 4)
    await rig.roll(deployment, limit=5, floor=2)
    assert deployment.revision == 2 and deployment.desired == 4
    assert _revisions(deployment) == [2, 2, 2, 2]
    for _ in range(3):  # the reconcile loop keeps it there
        await rig.step()
    assert _revisions(deployment) == [2, 2, 2, 2]


async def test_a_failure_midway_restores_the_old_revision_while_serving(rig: Rig) -> None:
    deployment = await _serving(rig, 3)
    await rig.plane.update(rig.workspace, "web", spec("2", 3))
    await rig.step()
    rig.pass_checks(rig.pending(deployment, 2))  # the first new replica passes; the next never does
    for _ in range(40):
        if deployment.rolling_out is None:
            break
        await rig.step()
        assert len(rig.up(deployment)) <= 4 + 1  # an old replica restarting beside the served new one
        assert rig.ready(deployment) >= 3
        rig.pass_checks([r for r in rig.pending(deployment, 1)])
    assert deployment.rolling_out is None and deployment.revision == 1
    assert "health check" in (deployment.rollback_reason or "")
    for _ in range(3):
        await rig.step()
    assert _revisions(deployment) == [1, 1, 1] and rig.ready(deployment) == 3 and deployment.desired == 3


def test_budgets_resolve_like_kubernetes() -> None:
    assert Rollout().budgets(3) == (1, 0)
    assert Rollout(max_surge="25%", max_unavailable="25%").budgets(3) == (1, 0)  # up, and down
    assert Rollout(max_surge=0, max_unavailable=0).budgets(5) == (1, 0)  # never stuck
    assert Rollout(max_surge=0, max_unavailable="40%").budgets(5) == (0, 2)
    for bad in (-1, "150%", "x%", "3"):
        with pytest.raises(ValueError):
            Rollout(max_surge=bad)
