"""Light and deep sleep: a scaled-away replica is frozen with its memory and woken
on the next request, holds only host memory (evictable), is stopped after its
light-sleep window, and is cleanly restarted if it dies while asleep."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from control_helpers import Env, spec

from tramontane.control.replica import Replica
from tramontane.control.scheduler import NodeCapacity
from tramontane.control.states import InvalidTransition, ReplicaState, check_transition


async def _wait_for(condition, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            if _process_state(pid) == "Z":
                return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} did not die"
        time.sleep(0.005)


def _napping(**scaling: float) -> dict:
    """A deployment that scales to zero a moment after its last request."""
    return {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after_s": 0.3, **scaling}


async def _asleep(env: Env, name: str) -> Replica:
    deployment = env.plane.get(env.workspace_id, name)
    # SLEEPING comes first, then the freeze and the measurement: wait for all.
    await _wait_for(
        lambda: len(deployment.sleeping()) == 1 and deployment.sleeping()[0].slept_at is not None, what=f"{name} asleep"
    )
    assert deployment.live() == [] and deployment.desired == 0
    return deployment.sleeping()[0]


def test_sleeping_transitions() -> None:
    check_transition(ReplicaState.RUNNING, ReplicaState.SLEEPING)
    for after in (ReplicaState.RUNNING, ReplicaState.UNHEALTHY, ReplicaState.STOPPING):
        check_transition(ReplicaState.SLEEPING, after)
    for before in (ReplicaState.PENDING, ReplicaState.STARTING, ReplicaState.UNHEALTHY):
        with pytest.raises(InvalidTransition):
            check_transition(before, ReplicaState.SLEEPING)


async def test_light_sleep_freezes_the_process_and_wakes_it(env: Env) -> None:
    await env.client.post("/v1/deployments", json=spec("nap", scaling=_napping()))
    first = await env.client.get("/serve/nap/")
    assert first.status_code == 200
    pid = first.json()["pid"]

    sleeper = await _asleep(env, "nap")
    assert sleeper.handle is not None and sleeper.handle.pid is not None
    # Its whole process group is frozen (the shell and the Python server under it).
    assert _process_state(sleeper.handle.pid) == "T" and _process_state(pid) == "T"
    assert sleeper.held_memory_mb > 0
    shown = (await env.client.get("/v1/deployments/nap")).json()["replicas"]
    assert [(r["state"], r["held_memory_mb"]) for r in shown] == [("SLEEPING", sleeper.held_memory_mb)]

    started = time.perf_counter()
    woken = await env.client.get("/serve/nap/again")
    print(f"\nlight wake to first response: {(time.perf_counter() - started) * 1000:.1f} ms")
    assert woken.status_code == 200 and woken.json() == {"pid": pid, "path": "/again"}
    assert sleeper.state is ReplicaState.RUNNING and sleeper.held_memory_mb == 0
    assert _process_state(pid) != "T"


async def test_wake_under_concurrent_requests_loses_none(env: Env) -> None:
    scaling = _napping(max_queued_requests=16)
    await env.client.post("/v1/deployments", json=spec("crowd", scaling=scaling))
    assert (await env.client.get("/serve/crowd/")).status_code == 200
    sleeper = await _asleep(env, "crowd")

    answers = await asyncio.gather(*(env.client.get(f"/serve/crowd/{i}") for i in range(12)))
    assert [a.status_code for a in answers] == [200] * 12
    assert sorted(a.json()["path"] for a in answers) == sorted(f"/{i}" for i in range(12))
    # One replica woke; none was launched beside it.
    assert {a.json()["pid"] for a in answers} == {answers[0].json()["pid"]}
    deployment = env.plane.get(env.workspace_id, "crowd")
    assert list(deployment.replicas.values()) == [sleeper] and deployment.queued == 0


async def test_queue_overflow_while_waking_is_503_and_the_rest_are_served(env: Env) -> None:
    # Deep sleep with a slow start: the queue (3) fills while the replica starts.
    body = spec("narrow", scaling=_napping(max_queued_requests=3, light_sleep_s=0))
    body["command"] = f"sleep 1 && {body['command']}"
    await env.client.post("/v1/deployments", json=body)
    answers = await asyncio.gather(*(env.client.get(f"/serve/narrow/{i}") for i in range(6)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 200, 503, 503, 503]
    assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 503)


async def test_light_sleep_ends_in_deep_sleep(env: Env) -> None:
    await env.client.post("/v1/deployments", json=spec("brief", scaling=_napping(light_sleep_s=0.3)))
    pid = (await env.client.get("/serve/brief/")).json()["pid"]
    deployment = env.plane.get(env.workspace_id, "brief")
    await _wait_for(lambda: not deployment.replicas, what="deep sleep")
    # The plane waits for the replica's leader; the server it started dies with the
    # group's SIGKILL, and may still be exiting for a moment (seen once in CI).
    _wait_dead(pid)
    again = await env.client.get("/serve/brief/")
    assert again.status_code == 200 and again.json()["pid"] != pid


@pytest.fixture
def capacity() -> NodeCapacity:
    return NodeCapacity(cpu=2, memory_mb=1024)


async def test_sleeping_replica_holds_memory_only_and_is_evicted_for_room(env: Env) -> None:
    wide = {"cpu": 2, "memory_mb": 256}
    await env.client.post("/v1/deployments", json=spec("dozer", resources=wide, scaling=_napping()))
    await env.client.post("/v1/deployments", json=spec("small", resources=wide, scaling=_napping()))
    assert (await env.client.get("/serve/dozer/")).status_code == 200
    dozer = await _asleep(env, "dozer")

    # Asleep, `dozer` holds no CPU: `small` (the whole node's CPU) starts beside it.
    assert (await env.client.get("/serve/small/")).status_code == 200
    assert dozer.state is ReplicaState.SLEEPING

    # `big` needs more memory than is free beside what the sleepers hold: they go,
    # least recently used first, and the running `small` (idle, above min) as needed.
    await _asleep(env, "small")
    big = spec("big", resources={"cpu": 1, "memory_mb": 1024 - dozer.held_memory_mb // 2}, scaling=_napping())
    await env.client.post("/v1/deployments", json=big)
    assert (await env.client.get("/serve/big/")).status_code == 200
    assert dozer.state is ReplicaState.STOPPED
    assert env.plane.get(env.workspace_id, "dozer").replicas == {}
    # Evicted, it wakes deep: a new process. The running `big` it needs room from was
    # used just now, so this needs no minimum idle age (that has its own tests).
    env.plane.min_idle_before_eviction_s = 0
    assert (await env.client.get("/serve/dozer/")).status_code == 200


async def test_crash_while_asleep_is_restarted_cleanly(env: Env) -> None:
    await env.client.post("/v1/deployments", json=spec("frail", scaling=_napping()))
    pid = (await env.client.get("/serve/frail/")).json()["pid"]
    sleeper = await _asleep(env, "frail")
    assert sleeper.handle is not None and sleeper.handle.pid is not None
    os.killpg(sleeper.handle.pid, signal.SIGKILL)

    # Its supervisor notices and restarts it; the deployment wants no replica, so
    # the reconcile loop then stops the restarted one (deep sleep).
    await _wait_for(lambda: sleeper.restarts == 1 and sleeper.state is ReplicaState.STOPPED, what="restart")
    deployment = env.plane.get(env.workspace_id, "frail")
    assert deployment.replicas == {}
    answer = await env.client.get("/serve/frail/")
    assert answer.status_code == 200 and answer.json()["pid"] != pid
    assert len(deployment.live()) == 1


async def test_crash_while_asleep_then_at_once_a_request(env: Env) -> None:
    await env.client.post("/v1/deployments", json=spec("brittle", scaling=_napping()))
    pid = (await env.client.get("/serve/brittle/")).json()["pid"]
    sleeper = await _asleep(env, "brittle")
    assert sleeper.handle is not None and sleeper.handle.pid is not None
    os.killpg(sleeper.handle.pid, signal.SIGKILL)
    # Dead for sure (its port closed), without yielding to the event loop, so the
    # wake may well find it dead before its supervisor does: either way, the
    # request is served by a new process.
    _wait_dead(pid)
    answer = await env.client.get("/serve/brittle/")
    assert answer.status_code == 200 and answer.json()["pid"] != pid
    assert sleeper.restarts == 1
