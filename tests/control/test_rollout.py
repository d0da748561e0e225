"""Revisions and rolling redeploys with real replica processes: a new spec is a
new revision, rolled out under load with no failed request; a revision that
cannot become healthy is rolled back and the deployment says why; an earlier
revision can be served again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from control_helpers import REPLICA_COMMAND, Env, spec

from tramontane.control.states import LIVE, ReplicaState


async def _settled(env: Env, name: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """The deployment once no rollout is running."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = (await env.client.get(f"/v1/deployments/{name}")).json()
        if shown["rolling_out"] is None:
            return shown
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.05)


async def _running(env: Env, name: str, count: int, timeout_s: float = 20.0) -> None:
    deployment = env.plane.get(env.workspace_id, name)
    deadline = time.monotonic() + timeout_s
    while sum(r.ready for r in deployment.replicas.values()) < count:
        assert time.monotonic() < deadline, f"{name} has not {count} running replicas"
        await asyncio.sleep(0.02)


async def _events(env: Env, name: str) -> list[str]:
    return [e["kind"] for e in (await env.client.get(f"/v1/deployments/{name}/events")).json()["data"]]


async def test_rolling_redeploy_under_load_fails_no_request(env: Env) -> None:
    body = spec("web", env={"APP_VERSION": "1"}, scaling={"min_replicas": 2, "max_replicas": 2})
    assert (await env.client.post("/v1/deployments", json=body)).status_code == 201
    await _running(env, "web", 2)
    old_pids = {r.handle.pid for r in env.plane.get(env.workspace_id, "web").replicas.values()}

    outcomes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    stop = asyncio.Event()

    seen: list[list[str]] = [[] for _ in range(4)]

    async def client(index: int) -> None:
        while not stop.is_set():
            answer = await env.client.get("/serve/web/version")
            outcomes[str(answer.status_code)] += 1
            if answer.status_code == 200:
                versions[answer.json()["version"]] += 1
                seen[index].append(answer.json()["version"])

    deployment = env.plane.get(env.workspace_id, "web")
    most_up = 0

    async def watch() -> None:  # the default surge: never more than 2 + 1 replicas up
        nonlocal most_up
        while not stop.is_set():
            up = [r for r in deployment.replicas.values() if r.state in LIVE and not r.draining]
            most_up = max(most_up, len(up))
            await asyncio.sleep(0.01)

    load = [asyncio.create_task(client(i)) for i in range(4)] + [asyncio.create_task(watch())]
    try:
        await asyncio.sleep(0.3)
        # The second replica of revision 2 starts a second after the first: for that
        # long revision 2 is half ready and serves beside the last old replica.
        first = env.home / "first-started"
        staggered = f"mkdir {first} 2>/dev/null || sleep 1; exec {REPLICA_COMMAND}"
        change = {"env": {"APP_VERSION": "2"}, "command": staggered}
        patched = await env.client.patch("/v1/deployments/web", json=change)
        assert patched.status_code == 200, patched.text
        assert patched.json()["rolling_out"] == 2
        shown = await _settled(env, "web")
        await asyncio.sleep(0.3)  # requests keep flowing after the switch
    finally:
        stop.set()
        await asyncio.gather(*load)

    assert set(outcomes) == {"200"}, outcomes
    assert most_up == 3
    assert versions["1"] > 0 and versions["2"] > 0, versions
    # Every client ends on revision 2.
    for answers in seen:
        assert answers[-1] == "2", answers
    assert shown["status"] == "active" and shown["revision"] == 2 and shown["status_reason"] is None
    replicas = env.plane.get(env.workspace_id, "web").replicas.values()
    assert [r.revision for r in replicas] == [2, 2]
    assert not old_pids & {r.handle.pid for r in replicas}
    revisions = (await env.client.get("/v1/deployments/web/revisions")).json()["data"]
    assert [(r["number"], r["status"]) for r in revisions] == [(1, "superseded"), (2, "active")]
    assert revisions[1]["spec"]["env"] == {"APP_VERSION": "2"}
    kinds = await _events(env, "web")
    assert kinds[-3:] == ["revision_created", "rollout_started", "rolled_out"]

    assert [r.restarts for r in replicas] == [0, 0]

    # Back to revision 1's spec, as revision 3.
    rolled = await env.client.post("/v1/deployments/web/rollback", json={})
    assert rolled.status_code == 200, rolled.text
    shown = await _settled(env, "web")
    assert shown["revision"] == 3 and shown["spec"]["env"] == {"APP_VERSION": "1"}
    assert (await env.client.get("/serve/web/version")).json()["version"] == "1"
    revisions = (await env.client.get("/v1/deployments/web/revisions")).json()["data"]
    assert revisions[-1]["reason"] == "rollback to revision 1"


async def test_a_revision_that_never_gets_healthy_is_rolled_back(env: Env) -> None:
    assert (await env.client.post("/v1/deployments", json=spec("steady", env={"APP_VERSION": "1"}))).status_code == 201
    # Listens nowhere: its health check cannot pass within the grace period.
    change = {"command": "sleep 60", "health_check": {"grace_period_s": 1}}
    assert (await env.client.patch("/v1/deployments/steady", json=change)).status_code == 200
    during = await env.client.patch("/v1/deployments/steady", json={"env": {"APP_VERSION": "3"}})
    assert during.status_code == 409 and during.json()["error"]["code"] == "rollout_in_progress"

    shown = await _settled(env, "steady")
    assert shown["status"] == "rolled_back" and shown["revision"] == 1
    assert "revision 2" in shown["status_reason"] and "health check" in shown["status_reason"]
    # The old replica served throughout and still does; the new one is gone.
    assert (await env.client.get("/serve/steady/version")).json()["version"] == "1"
    replicas = env.plane.get(env.workspace_id, "steady").replicas.values()
    assert [(r.revision, r.state) for r in replicas] == [(1, ReplicaState.RUNNING)]
    revisions = (await env.client.get("/v1/deployments/steady/revisions")).json()["data"]
    assert [(r["number"], r["status"]) for r in revisions] == [(1, "active"), (2, "failed")]
    assert "health check" in revisions[1]["reason"]
    assert (await _events(env, "steady"))[-1] == "rolled_back"


async def test_a_revision_that_exits_at_once_fails_fast(env: Env) -> None:
    assert (await env.client.post("/v1/deployments", json=spec("quick")) ).status_code == 201
    started = time.monotonic()
    assert (await env.client.patch("/v1/deployments/quick", json={"command": "exit 3"})).status_code == 200
    shown = await _settled(env, "quick")
    assert time.monotonic() - started < 5  # not the 10 s grace period
    assert shown["status"] == "rolled_back" and "exited with status 3" in shown["status_reason"]
    events = (await env.client.get("/v1/deployments/quick/events")).json()["data"]
    assert any(e["kind"] == "crashed" and e["revision"] == 2 for e in events)


async def test_rollback_and_update_refuse_bad_requests(env: Env) -> None:
    assert (await env.client.post("/v1/deployments", json=spec("only"))).status_code == 201
    no_earlier = await env.client.post("/v1/deployments/only/rollback")
    assert no_earlier.status_code == 400 and no_earlier.json()["error"]["code"] == "no_earlier_revision"
    assert (await env.client.post("/v1/deployments/only/rollback", json={"revision": 9})).status_code == 404
    assert (await env.client.post("/v1/deployments/only/rollback", json={"revision": 1})).status_code == 400
    renamed = await env.client.put("/v1/deployments/only", json=spec("other"))
    assert renamed.status_code == 400
    invalid = await env.client.patch("/v1/deployments/only", json={"scaling": {"min_replicas": -1}})
    assert invalid.status_code == 422 and "min_replicas" in invalid.json()["error"]["message"]
    assert (await env.client.patch("/v1/deployments/absent", json={})).status_code == 404
    assert [r["number"] for r in (await env.client.get("/v1/deployments/only/revisions")).json()["data"]] == [1]


async def test_a_change_being_prepared_refuses_another(env: Env, monkeypatch) -> None:
    """An image build can take minutes: a second change meanwhile is refused, not
    rolled out beside the first; a deployment deleted meanwhile gets no revision."""
    assert (await env.client.post("/v1/deployments", json=spec("built"))).status_code == 201
    building = asyncio.Event()
    release = asyncio.Event()
    prepare = env.plane.images.prepare

    async def slow_prepare(workspace_id: str, new_spec: Any) -> Any:
        building.set()
        await release.wait()
        return await prepare(workspace_id, new_spec)

    monkeypatch.setattr(env.plane.images, "prepare", slow_prepare)
    first = asyncio.create_task(env.client.patch("/v1/deployments/built", json={"env": {"APP_VERSION": "2"}}))
    await asyncio.wait_for(building.wait(), 10)
    # Bounded: without the guard, this one would wait on the same build.
    second = await asyncio.wait_for(env.client.patch("/v1/deployments/built", json={"env": {"APP_VERSION": "3"}}), 5)
    assert second.status_code == 409 and second.json()["error"]["code"] == "rollout_in_progress", second.text
    release.set()
    assert (await asyncio.wait_for(first, 10)).status_code == 200
    shown = await _settled(env, "built")
    assert shown["revision"] == 2 and shown["spec"]["env"] == {"APP_VERSION": "2"}

    building.clear()
    release.clear()
    late = asyncio.create_task(env.client.patch("/v1/deployments/built", json={"env": {"APP_VERSION": "4"}}))
    await asyncio.wait_for(building.wait(), 10)
    assert (await env.client.delete("/v1/deployments/built")).status_code == 200
    release.set()
    assert (await asyncio.wait_for(late, 10)).status_code == 404


async def test_restart_mid_rollout_rolls_back_and_leaves_no_replica(env: Env) -> None:
    assert (await env.client.post("/v1/deployments", json=spec("svc", env={"APP_VERSION": "1"}))).status_code == 201
    slow = {"command": "sleep 60", "health_check": {"grace_period_s": 30}}
    assert (await env.client.patch("/v1/deployments/svc", json=slow)).status_code == 200
    deployment = env.plane.get(env.workspace_id, "svc")
    while len(deployment.replicas) < 2 or any(r.handle is None for r in deployment.replicas.values()):
        await asyncio.sleep(0.02)
    pids = [r.handle.pid for r in deployment.replicas.values()]

    await env.restart_plane()
    shown = await _settled(env, "svc")
    assert shown["status"] == "rolled_back" and "restarted" in shown["status_reason"]
    assert shown["revision"] == 1 and len(shown["replicas"]) == 1
    for pid in pids:  # every replica of the stopped plane is gone
        assert not _alive(pid), pid
    assert (await env.client.get("/serve/svc/version")).json()["version"] == "1"
    revisions = (await env.client.get("/v1/deployments/svc/revisions")).json()["data"]
    assert [(r["number"], r["status"]) for r in revisions] == [(1, "active"), (2, "failed")]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
