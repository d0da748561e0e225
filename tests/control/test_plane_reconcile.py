"""The control plane's reconcile loop, table-driven and without processes: the
memory backend plays the replicas, a manual clock moves time (the loop runs every
second of it), and requests are held open with `acquire`. After each step, the
deployment's wanted count and its replicas by state must be as the table says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tramontane.control.backends.memory import MemoryBackend
from tramontane.control.clock import ManualClock, settle
from tramontane.control.deployment import Deployment
from tramontane.control.errors import NoCapacity
from tramontane.control.plane import ControlPlane
from tramontane.control.scheduler import NodeCapacity
from tramontane.control.spec import DeploymentSpec
from tramontane.control.states import ReplicaState
from tramontane.errors import Unavailable
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy



def spec(name: str, **scaling: Any) -> DeploymentSpec:
    defaults = {"max_replicas": 3, "target_concurrency": 1, "downscale_delay_s": 30, "scale_to_zero_after_s": 300}
    return DeploymentSpec.model_validate(
        {"name": name, "command": "serve", "scaling": {**defaults, **scaling}, "resources": {"cpu": 1}}
    )


class Plane:
    def __init__(self, plane: ControlPlane, clock: ManualClock, backend: MemoryBackend, workspace: str):
        self.plane, self.clock, self.backend, self.workspace = plane, clock, backend, workspace
        self.held = AsyncExitStack()

    async def hold(self, deployment: Deployment, requests: int) -> None:
        """`requests` more requests in flight on `deployment` until `release`."""
        for _ in range(requests):
            await self.held.enter_async_context(self.plane.acquire(deployment))

    async def release(self) -> None:
        await self.held.aclose()
        self.held = AsyncExitStack()
        await settle()

    def shape(self, deployment: Deployment) -> tuple[int, int, int]:
        """(wanted, running, sleeping)."""
        states = [r.state for r in deployment.replicas.values()]
        return deployment.desired, states.count(ReplicaState.RUNNING), states.count(ReplicaState.SLEEPING)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Plane]:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    workspace, _ = Tenancy(store, home=tmp_path).create_tenant("t", frozenset({Capability.DEPLOY}))
    clock, backend = ManualClock(), MemoryBackend()
    plane = ControlPlane(
        store, backend=backend, capacity=NodeCapacity(cpu=3, memory_mb=4096), home=tmp_path, clock=clock
    )
    await plane.start()
    env = Plane(plane, clock, backend, workspace)
    try:
        yield env
    finally:
        await env.release()
        await plane.stop()
        store.close()


# Steps: ("hold", n) | ("release",) | ("advance", s), each followed by (wanted, running, sleeping).
CASES = {
    "wakes from zero on a request, scales with load": (
        {},
        [
            (("advance", 1), (0, 0, 0)),
            (("hold", 1), (1, 1, 0)),
            (("hold", 2), (1, 1, 0)),  # three in flight on one replica, until the loop runs
            (("advance", 1), (3, 3, 0)),
        ],
    ),
    "scales down after the delay, asleep first, then to zero": (
        {"light_sleep_s": 100},
        [
            (("hold", 3), (1, 1, 0)),
            (("advance", 1), (3, 3, 0)),
            (("release",), (3, 3, 0)),
            (("advance", 29), (3, 3, 0)),
            (("advance", 2), (1, 1, 2)),  # idle: one warm replica kept, two fall asleep
            (("advance", 100), (1, 1, 0)),  # light sleep over: deep sleep (stopped)
            (("advance", 170), (0, 0, 1)),  # idle 300 s since the release: to zero, asleep
            (("advance", 100), (0, 0, 0)),
        ],
    ),
    "without light sleep, scaled-away replicas stop": (
        {"light_sleep_s": 0},
        [(("hold", 2), (1, 1, 0)), (("advance", 1), (2, 2, 0)), (("release",), (2, 2, 0)), (("advance", 31), (1, 1, 0))],
    ),
    "a request wakes the sleeping replica rather than launching one": (
        {"light_sleep_s": 1000, "scale_to_zero_after_s": 10, "downscale_delay_s": 0},
        [(("hold", 1), (1, 1, 0)), (("release",), (1, 1, 0)), (("advance", 11), (0, 0, 1)), (("hold", 1), (1, 1, 0))],
    ),
    "min_replicas are kept however idle": (
        {"min_replicas": 2},
        [(("advance", 1), (2, 2, 0)), (("advance", 1000), (2, 2, 0))],
    ),
}


async def settled_shape(
    env: Plane, deployment: Deployment, expected: tuple[int, int, int], wait_s: float = 10.0
) -> tuple[int, int, int]:
    """The shape once the loop has caught up. A replica going to sleep reads its memory
    in a worker thread (control/replica.py), which a loaded machine may not finish within
    settle()'s passes; real waiting here moves no time on the manual clock, so the plane
    makes no decision it would not make at once on an idle machine."""
    deadline = time.monotonic() + wait_s
    await settle()
    while env.shape(deployment) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        await settle()
    return env.shape(deployment)


@pytest.mark.parametrize("case", CASES)
async def test_reconcile(env: Plane, case: str) -> None:
    scaling, steps = CASES[case]
    deployment = await env.plane.create(env.workspace, spec("svc", **scaling))
    await settle()
    for step, expected in steps:
        action, *args = step
        if action == "hold":
            await env.hold(deployment, args[0])
        elif action == "release":
            await env.release()
        else:
            await env.clock.advance(args[0])
        assert await settled_shape(env, deployment, expected) == expected, (step, env.shape(deployment))


async def test_waking_reuses_the_sleeping_process(env: Plane) -> None:
    deployment = await env.plane.create(
        env.workspace, spec("svc", light_sleep_s=1000, scale_to_zero_after_s=10, downscale_delay_s=0)
    )
    await env.hold(deployment, 1)
    await env.release()
    await env.clock.advance(11)
    assert env.shape(deployment) == (0, 0, 1)
    await env.hold(deployment, 1)
    assert len(env.backend.launched) == 1


async def test_an_idle_replica_of_another_deployment_makes_room_once_idle_long_enough(env: Plane) -> None:
    # A long stabilisation window: the autoscaler keeps all three, only eviction frees a CPU.
    other = await env.plane.create(env.workspace, spec("other", light_sleep_s=0, downscale_delay_s=600))
    await env.hold(other, 3)
    await env.clock.advance(1)
    assert env.shape(other) == (3, 3, 0)  # the node's three CPUs taken
    await env.release()
    assert env.plane.min_idle_before_eviction_s == 30

    # Idle for less than the minimum: kept, and the new deployment is refused as
    # when nothing is idle (nothing stored, nothing evicted, a 503 with Retry-After).
    await env.clock.advance(29)
    with pytest.raises(NoCapacity, match=r"3 idle for less than 30 s are kept") as refused:
        await env.plane.create(env.workspace, spec("pinned", min_replicas=1))
    assert refused.value.retry_after_s == 5
    assert env.plane.list(env.workspace) == [other]
    assert env.shape(other) == (3, 3, 0)
    assert not [e for e in env.plane.events(env.workspace, "other") if e.kind == "evicted"]

    # Idle past the minimum: one of them makes room.
    await env.clock.advance(1)
    pinned = await env.plane.create(env.workspace, spec("pinned", min_replicas=1))
    await settle()
    assert env.shape(pinned) == (1, 1, 0)
    assert env.shape(other) == (2, 2, 0)  # evicted one, and wants one fewer
    assert len([e for e in env.plane.events(env.workspace, "other") if e.kind == "evicted"]) == 1


async def test_a_request_waking_from_zero_does_not_take_a_replica_just_used(env: Plane) -> None:
    other = await env.plane.create(env.workspace, spec("other", light_sleep_s=0, downscale_delay_s=600))
    await env.hold(other, 3)
    await env.clock.advance(1)
    await env.release()
    sleeper = await env.plane.create(env.workspace, spec("sleeper", wake_timeout_s=5))
    await env.clock.advance(10)

    with pytest.raises(Unavailable):
        await env.hold(sleeper, 1)
    assert env.shape(other) == (3, 3, 0)
    assert env.shape(sleeper)[1] == 0

    await env.clock.advance(30)
    await env.hold(sleeper, 1)
    assert env.shape(sleeper) == (1, 1, 0)
    assert env.shape(other) == (2, 2, 0)


async def test_a_replica_that_cannot_fit_is_refused(env: Plane) -> None:
    huge = DeploymentSpec.model_validate(
        {"name": "huge", "command": "serve", "resources": {"cpu": 8}, "scaling": {"min_replicas": 1}}
    )
    with pytest.raises(NoCapacity, match="the node only has cpu=3"):
        await env.plane.create(env.workspace, huge)
    assert env.plane.list(env.workspace) == []


async def test_a_request_finds_no_replica_within_the_wake_timeout(env: Plane) -> None:
    env.backend.healthy_on_launch = False
    deployment = await env.plane.create(env.workspace, spec("slow", wake_timeout_s=5))
    task = asyncio.ensure_future(env.hold(deployment, 1))
    await settle()
    assert not task.done()
    await env.clock.advance(5)
    with pytest.raises(Unavailable, match="has no ready replica yet"):
        await task


async def test_a_failed_pass_does_not_end_the_loop(env: Plane) -> None:
    """The database busy for a moment fails one pass; the loop goes on and the
    next pass scales as it should."""
    deployment = await env.plane.create(env.workspace, spec("web"))
    set_desired = env.plane.repository.set_desired
    failures = [1]

    def flaky(deployment_id: str, desired: int) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OperationalError("UPDATE deployments", {}, Exception("database is locked"))
        set_desired(deployment_id, desired)

    await env.hold(deployment, 3)
    env.plane.repository.set_desired = flaky  # type: ignore[method-assign]
    await env.clock.advance(1)  # this pass fails to record the new count
    assert failures == [0]
    await env.clock.advance(1)
    assert env.shape(deployment) == (3, 3, 0)
