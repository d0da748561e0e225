"""Packing by resources, eviction, refusal, and a control plane that restarts."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from control_helpers import Env, spec

from tramontane.control.backends.local import process_start_time
from tramontane.control.errors import NoCapacity
from tramontane.control.models import DeploymentRow, ReplicaRow
from tramontane.control.scheduler import NodeCapacity, Occupant, place
from tramontane.control.spec import DeploymentSpec, Resources
from tramontane.control.states import ReplicaState


@pytest.fixture
def capacity() -> NodeCapacity:
    return NodeCapacity(cpu=2, memory_mb=1024)


def test_place_evicts_least_recently_used_idle_replicas_of_others() -> None:
    node = NodeCapacity(cpu=3, memory_mb=3000)
    one = Resources(cpu=1, memory_mb=1000)
    occupants = [
        Occupant("recent", "a", one, evictable=True, last_used=20.0),
        Occupant("old", "b", one, evictable=True, last_used=10.0),
        Occupant("busy", "c", one, evictable=False, last_used=1.0),
    ]
    assert place(node, occupants[:2], one, "x", now=100.0) == []
    assert place(node, occupants, one, "x", now=100.0) == ["old"]
    assert place(node, occupants, Resources(cpu=2, memory_mb=1000), "x", now=100.0) == ["old", "recent"]
    # Never its own replicas, never busy ones, and nothing bigger than the node.
    assert place(node, occupants, one, "b", now=100.0) == ["recent"]
    with pytest.raises(NoCapacity, match="no idle replica"):
        place(node, occupants, Resources(cpu=3, memory_mb=1000), "x", now=100.0)
    with pytest.raises(NoCapacity, match="node only has cpu=3"):
        place(node, [], Resources(cpu=1, memory_mb=1000, gpus=1), "x", now=100.0)


def test_place_counts_custom_resources() -> None:
    node = NodeCapacity(cpu=4, memory_mb=4000, custom={"a100": 1})
    a100 = Resources(cpu=1, memory_mb=1000, custom={"a100": 1})
    holder = Occupant("holder", "a", a100, evictable=True, last_used=1.0)
    assert place(node, [], a100, "x", now=100.0) == []
    assert place(node, [holder], a100, "x", now=100.0) == ["holder"]
    with pytest.raises(NoCapacity, match="needs cpu=1, memory_mb=1000, gpus=0, gpu_memory_mb=0, h100=1"):
        place(node, [], Resources(cpu=1, memory_mb=1000, custom={"h100": 1}), "x", now=100.0)


async def test_new_deployment_evicts_idle_one_and_refuses_what_cannot_fit(env: Env) -> None:
    wide = {"cpu": 2, "memory_mb": 512}
    scale_to_zero = {"min_replicas": 0, "max_replicas": 1}
    await env.client.post("/v1/deployments", json=spec("first", resources=wide, scaling=scale_to_zero))
    await env.client.post("/v1/deployments", json=spec("second", resources=wide, scaling=scale_to_zero))

    assert (await env.client.get("/serve/first/")).status_code == 200
    # The node is full and `first` was used just now: it is kept, `second` waits.
    kept = await env.client.get("/serve/second/")
    assert kept.status_code == 503 and kept.headers["retry-after"] == "5"
    assert "idle for less than 30 s are kept" in kept.json()["error"]["message"]
    # Without a minimum idle age (its own tests are on the fake clock), waking
    # `second` evicts idle `first` at once.
    env.plane.min_idle_before_eviction_s = 0
    assert (await env.client.get("/serve/second/")).status_code == 200
    first = env.plane.get(env.workspace_id, "first")
    assert first.live() == [] and first.desired == 0

    # Pinned at one replica, `pinned` cannot be evicted, so `third` cannot fit.
    await env.client.delete("/v1/deployments/second")
    pinned = await env.client.post("/v1/deployments", json=spec("pinned", resources=wide))
    assert pinned.status_code == 201
    await env.client.post("/v1/deployments", json=spec("third", resources=wide, scaling=scale_to_zero))
    refused = await env.client.get("/serve/third/")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "insufficient_capacity"
    assert "no idle replica" in refused.json()["error"]["message"]

    too_big = await env.client.post("/v1/deployments", json=spec("huge", resources={"cpu": 8}))
    assert too_big.status_code == 503 and "node only has cpu=2" in too_big.text
    assert (await env.client.get("/v1/deployments/huge")).status_code == 404


async def test_restarted_control_plane_restores_deployments(env: Env) -> None:
    # A long downscale delay: the idle restored replicas must not shrink before they are counted.
    scaling = {"min_replicas": 1, "max_replicas": 2, "downscale_delay_s": 60}
    await env.client.post("/v1/deployments", json=spec("durable", scaling=scaling))
    await env.client.post("/v1/deployments/durable/scale", json={"replicas": 2})
    before = {r["pid"] for r in (await env.client.get("/v1/deployments/durable")).json()["replicas"]}

    await env.restart_plane(NodeCapacity(cpu=2, memory_mb=1024))
    restored = env.plane.get(env.workspace_id, "durable")
    assert restored.desired == 2 and len(restored.live()) == 2
    answered = await env.client.get("/serve/durable/")
    assert answered.status_code == 200 and answered.json()["pid"] not in before


async def test_start_kills_replicas_a_crashed_control_plane_left(env: Env) -> None:
    await env.client.post("/v1/deployments", json=spec("orphaned", scaling={"min_replicas": 0}))
    deployment_id = env.plane.get(env.workspace_id, "orphaned").id
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        with env.store.session() as session:
            session.add(
                ReplicaRow(
                    id="rep_orphan",
                    workspace_id=env.workspace_id,
                    deployment_id=deployment_id,
                    state=ReplicaState.RUNNING.value,
                    pid=orphan.pid,
                    pid_start=process_start_time(orphan.pid),
                    restarts=0,
                )
            )
        await env.restart_plane()
        assert await asyncio.to_thread(orphan.wait, 5) == -9
        with env.store.session() as session:
            assert session.query(ReplicaRow).count() == 0
            assert session.query(DeploymentRow).count() == 1
    finally:
        orphan.kill()
        orphan.wait()


def test_spec_validation_and_defaults() -> None:
    model = DeploymentSpec.model_validate({"name": "tiny", "kind": "model", "model": "/models/x.gguf"})
    assert model.routes.models == ["tiny"] and model.routes.path_prefix is None
    assert model.argv()[-5:] == ["up", "--model", "tiny=/models/x.gguf", "--port", "$PORT"]
    command = DeploymentSpec.model_validate({"name": "web", "command": "python -m http.server $PORT"})
    assert command.routes.path_prefix == "/web"
    for bad in (
        {"name": "Bad Name", "command": "x"},
        {"name": "no-command"},
        {"name": "x", "command": "y", "env": {"PORT": "1"}},
        {"name": "x", "command": "y", "scaling": {"min_replicas": 3, "max_replicas": 2}},
        {"name": "x", "command": "y", "unknown": 1},
        {"name": "x", "command": "y", "resources": {"custom": {"CPU": 1}}},
        {"name": "x", "command": "y", "resources": {"custom": {"a100": 0}}},
    ):
        with pytest.raises(ValueError):
            DeploymentSpec.model_validate(bad)
