"""The Ray backend on a local two-node Ray cluster: replicas placed on nodes by
resources, the router reaching both, an actor's death answered by a restart,
output pulled back into the logs, and deletion releasing the actors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from control_helpers import REPLICA_COMMAND, Env, spec

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from tramontane.control.backends.ray import RayBackend, actor_resources  # noqa: E402
from tramontane.control.deployment import Deployment  # noqa: E402
from tramontane.control.scheduler import NodeCapacity  # noqa: E402
from tramontane.control.spec import Resources  # noqa: E402

_OBJECT_STORE_BYTES = 80 * 2**20
# Ray starts a worker process per actor; on a busy two-core machine that takes seconds.
_HEALTH = {"grace_period_s": 60}
# exec: the shell becomes the app, so the pid a replica reports is the one that answers.
_COMMAND = f"exec {REPLICA_COMMAND}"


@pytest.fixture(scope="module")
def backend() -> Iterator[RayBackend]:
    """A head node with one CPU and the resource `node_a`, a worker node with one
    CPU and `node_b`, and the backend connected to them."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"node_a": 1},
            "object_store_memory": _OBJECT_STORE_BYTES,
            "include_dashboard": False,
        },
    )
    try:
        cluster.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=_OBJECT_STORE_BYTES)
        cluster.wait_for_nodes()
        yield RayBackend(cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def nodes(backend: RayBackend) -> dict[str, str]:
    """Node ids by the custom resource that marks each node."""
    alive = [node for node in ray.nodes() if node["Alive"]]
    return {mark: node["NodeID"] for node in alive for mark in ("node_a", "node_b") if mark in node["Resources"]}


@pytest.fixture
def capacity(backend: RayBackend) -> NodeCapacity:
    return backend.capacity()


async def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def all_ready(deployment: Deployment, count: int) -> Callable[[], bool]:
    return lambda: sum(r.ready for r in deployment.replicas.values()) == count


def test_actor_resources_ask_ray_for_the_replicas_resources() -> None:
    resources = Resources(cpu=0.5, memory_mb=256, gpus=1, gpu_memory_mb=8192, custom={"a100": 1})
    assert actor_resources(resources) == {
        "num_cpus": 0.5,
        "num_gpus": 1,
        "memory": 256 * 2**20,
        "resources": {"a100": 1, "gpu_memory_mb": 8192},
    }


def test_capacity_is_the_clusters(capacity: NodeCapacity) -> None:
    assert capacity.cpu == 2
    assert capacity.custom["node_a"] == 1 and capacity.custom["node_b"] == 1


async def test_replicas_spread_by_resources_and_restart_after_actor_death(env: Env, nodes: dict[str, str]) -> None:
    # One CPU each on nodes of one CPU: Ray can only put them on different nodes.
    created = await env.client.post(
        "/v1/deployments",
        json=spec(
            "web",
            command=_COMMAND,
            resources={"cpu": 1, "memory_mb": 64},
            health_check=_HEALTH,
            scaling={"min_replicas": 2, "max_replicas": 2},
        ),
    )
    assert created.status_code == 201, created.text
    deployment = env.plane.get(env.workspace_id, "web")
    await until(all_ready(deployment, 2))
    shown = (await env.client.get("/v1/deployments/web")).json()["replicas"]
    assert sorted(r["node"] for r in shown) == sorted(nodes.values())
    pids = {r["pid"] for r in shown}
    answered = set()
    for _ in range(50):
        response = await env.client.get("/serve/web/")
        assert response.status_code == 200
        answered.add(response.json()["pid"])
        if answered == pids:
            break
    assert answered == pids

    victim = next(r for r in deployment.replicas.values() if r.handle and r.handle.node == nodes["node_b"])
    survivor = next(r for r in deployment.replicas.values() if r is not victim)
    assert victim.handle is not None and survivor.handle is not None
    old_pid = victim.handle.pid
    ray.kill(victim.handle.actor, no_restart=True)
    await until(lambda: not victim.ready)
    for _ in range(5):
        response = await env.client.get("/serve/web/")
        assert response.status_code == 200 and response.json()["pid"] == survivor.handle.pid
    # The watchdog kills the process of an actor that died.
    await until(lambda: old_pid is not None and not running(old_pid), timeout_s=10)

    await until(lambda: victim.ready)
    assert victim.restarts == 1 and victim.handle.pid != old_pid
    assert victim.handle.node == nodes["node_b"]
    answered = set()
    for _ in range(50):
        answered.add((await env.client.get("/serve/web/")).json()["pid"])
        if victim.handle.pid in answered:
            break
    assert victim.handle.pid in answered

    # A replica's output reaches its log through remote calls, so it may trail readiness.
    deadline = time.monotonic() + 10
    while (logs := (await env.client.get("/v1/deployments/web/logs")).text).count(
        f"[{victim.id}] replica "
    ) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert logs.count(f"[{victim.id}] replica ") == 2  # started twice
    assert f"[{survivor.id}] replica " in logs and '"GET / HTTP/1.1" 200' in logs

    actors = [r.handle.actor for r in deployment.replicas.values() if r.handle]
    pids = {r.handle.pid for r in deployment.replicas.values() if r.handle}
    assert (await env.client.delete("/v1/deployments/web")).status_code == 200
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            await actor.wait.remote()
    assert not any(running(pid) for pid in pids if pid is not None)
    await until(lambda: ray.available_resources().get("CPU") == 2, timeout_s=10)


async def test_custom_resources_pin_a_replica_to_a_node(env: Env, nodes: dict[str, str]) -> None:
    resources = {"cpu": 0.1, "memory_mb": 64, "custom": {"node_b": 1}}
    # A workspace secret reaches a replica on another node too, as a variable and as a file.
    assert (await env.client.post("/v1/secrets", json={"name": "tok", "value": "on-node-b"})).status_code == 201
    pinned = spec(
        "pinned",
        command=_COMMAND,
        resources=resources,
        health_check=_HEALTH,
        env={"TOKEN": {"secret": "tok"}},
        files={"tok": {"secret": "tok"}},
    )
    assert (await env.client.post("/v1/deployments", json=pinned)).status_code == 201
    deployment = env.plane.get(env.workspace_id, "pinned")
    await until(all_ready(deployment, 1))
    (replica,) = deployment.replicas.values()
    assert replica.handle is not None and replica.handle.node == nodes["node_b"]
    assert (await env.client.get("/serve/pinned/hello")).json()["path"] == "/hello"
    assert (await env.client.get("/serve/pinned/env", params={"name": "TOKEN"})).json()["value"] == "on-node-b"
    read = (await env.client.get("/serve/pinned/file", params={"path": "tok"})).json()
    assert read["value"] == "on-node-b" and read["mode"] == 0o400 and read["dir_mode"] == 0o700

    # No node offers it: refused at once, not left waiting for a node that never comes.
    nowhere = spec("nowhere", resources={"cpu": 0.1, "custom": {"node_c": 1}})
    refused = await env.client.post("/v1/deployments", json=nowhere)
    assert refused.status_code == 503 and "node_c=1" in refused.json()["error"]["message"]

    # The node's copy of the file goes with the replica (both nodes are this machine here).
    assert (await env.client.delete("/v1/deployments/pinned")).status_code == 200
    await until(lambda: not Path(read["dir"]).exists(), timeout_s=20)


async def test_a_replica_ray_cannot_place_is_retried_and_its_actor_killed(env: Env) -> None:
    # Outside the control plane's books, something holds node_b: the replica fits
    # the cluster's totals, but Ray keeps its actor waiting for a node.
    @ray.remote(num_cpus=0, resources={"node_b": 1})
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    assert await holder.ready.remote()
    resources = {"cpu": 0.1, "memory_mb": 64, "custom": {"node_b": 1}}
    held = spec("held", command=_COMMAND, resources=resources, health_check={"grace_period_s": 1})
    assert (await env.client.post("/v1/deployments", json=held)).status_code == 201
    (replica,) = env.plane.get(env.workspace_id, "held").replicas.values()
    # Each launch gives up after the grace period, and the replica is started again.
    await until(lambda: replica.restarts >= 2, timeout_s=20)
    assert not replica.ready
    assert (await env.client.delete("/v1/deployments/held")).status_code == 200

    # No waiting actor was left behind to take node_b once it is free.
    ray.kill(holder)
    await until(lambda: ray.available_resources().get("node_b") == 1, timeout_s=10)
    await asyncio.sleep(0.5)
    assert ray.available_resources().get("node_b") == 1
