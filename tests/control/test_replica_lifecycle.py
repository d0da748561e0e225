"""A replica's lifecycle, table-driven, without processes or waiting: the memory
backend plays the process and a manual clock moves time. Each case is a list of
steps, each followed by the state the replica must be in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tramontane.control.backends.memory import MemoryBackend, MemoryReplica
from tramontane.control.clock import ManualClock, settle
from tramontane.control.replica import Replica
from tramontane.control.spec import DeploymentSpec
from tramontane.control.states import ReplicaState

S = ReplicaState
COMMAND = DeploymentSpec.model_validate(
    {
        "name": "svc",
        "command": "serve",
        "health_check": {"grace_period_s": 60, "interval_s": 5, "failures_before_restart": 3},
    }
)
MODEL = DeploymentSpec.model_validate({"name": "llm", "kind": "model", "model": "/models/x.gguf"})


class Harness:
    def __init__(self, spec: DeploymentSpec, tmp_path: Path):
        self.clock = ManualClock()
        self.backend = MemoryBackend()
        self.states: list[ReplicaState] = []
        self.replica = Replica(
            "rep-1", "dep-1", spec, self.backend, tmp_path / "rep-1.log", {}, self._changed, self.clock
        )
        self.results: list[bool] = []

    def _changed(self, replica: Replica) -> None:
        if not self.states or self.states[-1] is not replica.state:
            self.states.append(replica.state)

    @property
    def process(self) -> MemoryReplica:
        handle = self.replica.handle
        assert isinstance(handle, MemoryReplica)
        return handle

    async def run(self, step: tuple[Any, ...]) -> None:
        action, *args = step
        if action == "start":
            self.replica.start()
        elif action == "advance":
            await self.clock.advance(args[0])
        elif action == "crash":
            self.process.exit(1)
        elif action == "health":
            self.process.healthy = args[0]
        elif action == "refuse":
            self.process.refuses.add(args[0])
        elif action == "fail_launches":
            self.backend.fail_launches = args[0]
            self.backend.healthy_on_launch = True
        elif action == "unhealthy_launches":
            self.backend.healthy_on_launch = False
        elif action == "sleep":
            self.results.append(await self.replica.sleep())
        elif action == "wake":
            self.results.append(await self.replica.wake())
        elif action == "stop":
            await self.replica.stop()
        else:
            raise AssertionError(f"unknown step {action}")
        await settle()


CASES = {
    "starts and passes its first check": (COMMAND, [(("start",), S.RUNNING)]),
    "not healthy within the grace period: restarted": (
        COMMAND,
        [
            (("unhealthy_launches",), S.PENDING),
            (("start",), S.STARTING),
            (("advance", 59.9), S.STARTING),
            (("advance", 0.2), S.UNHEALTHY),
            (("advance", 0.1), S.STARTING),  # the first back-off is 0.1 s
        ],
    ),
    "a crash while running: restarted at once": (
        COMMAND,
        [(("start",), S.RUNNING), (("crash",), S.UNHEALTHY), (("advance", 0.1), S.RUNNING)],
    ),
    "fails failures_before_restart checks in a row: restarted": (
        COMMAND,
        [
            (("start",), S.RUNNING),
            (("health", False), S.RUNNING),
            (("advance", 14.9), S.RUNNING),  # two failed checks, at 5 s and 10 s
            (("advance", 0.1), S.UNHEALTHY),  # the third, at 15 s
        ],
    ),
    "one failed check among good ones: kept": (
        COMMAND,
        [
            (("start",), S.RUNNING),
            (("health", False), S.RUNNING),
            (("advance", 5), S.RUNNING),
            (("health", True), S.RUNNING),
            (("advance", 30), S.RUNNING),
        ],
    ),
    "launches that fail back off, doubling": (
        COMMAND,
        [
            (("fail_launches", 2), S.PENDING),
            (("start",), S.UNHEALTHY),
            (("advance", 0.1), S.UNHEALTHY),  # second launch fails too
            (("advance", 0.19), S.UNHEALTHY),  # back-off now 0.2 s
            (("advance", 0.01), S.RUNNING),
        ],
    ),
    "light sleep and wake": (
        COMMAND,
        [(("start",), S.RUNNING), (("sleep",), S.SLEEPING), (("wake",), S.RUNNING)],
    ),
    "asleep, its checks are not counted": (
        COMMAND,
        [(("start",), S.RUNNING), (("sleep",), S.SLEEPING), (("advance", 60), S.SLEEPING)],
    ),
    "asleep, an exit still counts": (
        COMMAND,
        [(("start",), S.RUNNING), (("sleep",), S.SLEEPING), (("crash",), S.UNHEALTHY), (("advance", 0.1), S.RUNNING)],
    ),
    "a model that will not free its cache stays awake": (
        MODEL,
        [(("start",), S.RUNNING), (("refuse", "sleep"), S.RUNNING), (("sleep",), S.RUNNING)],
    ),
    "a replica that does not answer on waking is restarted": (
        COMMAND,
        [
            (("start",), S.RUNNING),
            (("sleep",), S.SLEEPING),
            (("health", False), S.SLEEPING),
            (("wake",), S.UNHEALTHY),
            (("advance", 0.1), S.RUNNING),
        ],
    ),
    "stopped while starting": (
        COMMAND,
        [(("unhealthy_launches",), S.PENDING), (("start",), S.STARTING), (("stop",), S.STOPPED)],
    ),
    "stopped while asleep": (COMMAND, [(("start",), S.RUNNING), (("sleep",), S.SLEEPING), (("stop",), S.STOPPED)]),
}


@pytest.mark.parametrize("case", CASES)
async def test_replica_lifecycle(case: str, tmp_path: Path) -> None:
    spec, steps = CASES[case]
    harness = Harness(spec, tmp_path)
    try:
        for step, expected in steps:
            await harness.run(step)
            assert harness.replica.state is expected, (step, harness.states)
    finally:
        await harness.replica.stop()
    assert harness.replica.state is S.STOPPED
    assert all(r.stopped or r.exited for r in harness.backend.replicas.values()), "a process was left running"


async def test_restarts_back_off_doubling_up_to_a_cap(tmp_path: Path) -> None:
    harness = Harness(COMMAND, tmp_path)
    harness.backend.fail_launches = 100
    launched_at: list[float] = []
    launch = harness.backend.launch

    async def timed_launch(*args: Any) -> MemoryReplica:
        launched_at.append(harness.clock.now())
        return await launch(*args)

    harness.backend.launch = timed_launch  # type: ignore[method-assign]
    harness.replica.start()
    await settle()
    await harness.clock.advance(120)
    gaps = [round(b - a, 6) for a, b in zip(launched_at, launched_at[1:], strict=False)]
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert harness.replica.restarts == len(launched_at) == 12
    await harness.replica.stop()


async def test_model_sleep_and_wake_call_the_replica(tmp_path: Path) -> None:
    harness = Harness(MODEL, tmp_path)
    harness.replica.start()
    await settle()
    assert await harness.replica.sleep()
    assert harness.process.paused and harness.replica.held_memory_mb == 100
    assert harness.replica.slept_at == harness.clock.now()
    await harness.clock.advance(7)
    assert await harness.replica.wake()
    assert not harness.process.paused and harness.replica.held_memory_mb == 0
    assert harness.replica.last_used == harness.clock.now()
    assert harness.backend.calls == [("rep-1", "sleep"), ("rep-1", "wake")]
    await harness.replica.stop()
    assert harness.states == [S.STARTING, S.RUNNING, S.SLEEPING, S.RUNNING, S.STOPPING, S.STOPPED]
