"""Deployments end to end: create, route, stream, scale, wake from zero, crash."""

from __future__ import annotations

import asyncio
import time

from control_helpers import Env, spec

from tramontane.control.states import ReplicaState


async def _wait_for(condition, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _running(env: Env, name: str) -> int:
    deployment = env.plane.get(env.workspace_id, name)
    return sum(r.state is ReplicaState.RUNNING for r in deployment.replicas.values())


async def test_create_route_stream_and_logs(env: Env) -> None:
    routes = {"models": ["echo-1"], "path_prefix": "/echo"}
    created = await env.client.post("/v1/deployments", json=spec("echo", routes=routes))
    assert created.status_code == 201, created.text
    assert created.json()["desired_replicas"] == 1

    by_path = await env.client.get("/serve/echo/hello?x=1")
    assert by_path.status_code == 200, by_path.text
    assert by_path.json()["path"] == "/hello?x=1"

    # The path goes on as the client encoded it.
    encoded = await env.client.get("/serve/echo/a%20b%3Fc?q=1%2E5")
    assert encoded.status_code == 200, encoded.text
    assert encoded.json()["path"] == "/a%20b%3Fc?q=1%2E5"

    by_model = await env.client.post("/serve/v1/chat/completions", json={"model": "echo-1", "messages": []})
    assert by_model.json() == {"pid": by_path.json()["pid"], "path": "/v1/chat/completions", "model": "echo-1"}

    async with env.client.stream("GET", "/serve/echo/stream") as streamed:
        assert streamed.status_code == 200
        assert [line async for line in streamed.aiter_lines()] == [f"line {i}" for i in range(5)]

    missing = await env.client.post("/serve/v1/chat/completions", json={"model": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "deployment_not_found"

    listed = (await env.client.get("/v1/deployments")).json()["data"]
    assert [d["name"] for d in listed] == ["echo"]
    assert listed[0]["replicas"][0]["state"] == "RUNNING"
    logs = await env.client.get("/v1/deployments/echo/logs")
    assert "listening on" in logs.text and "GET /hello?x=1" in logs.text

    duplicate = await env.client.post("/v1/deployments", json=spec("echo"))
    assert duplicate.status_code == 409

    assert (await env.client.delete("/v1/deployments/echo")).json()["deleted"] is True
    assert (await env.client.get("/v1/deployments/echo")).status_code == 404


async def test_scales_up_under_load_and_back_down(env: Env) -> None:
    body = spec("busy", scaling={"min_replicas": 1, "max_replicas": 3, "target_concurrency": 1})
    assert (await env.client.post("/v1/deployments", json=body)).status_code == 201
    # The first replica takes the load alone: started together on a busy machine,
    # the others could otherwise be ready first and take some of it.
    await _wait_for(lambda: _running(env, "busy") == 1, what="the first replica")

    # The load outlasts the new replicas' start (a second or two on a busy machine):
    # once it ends, downscale_delay_s 0 would take them away again at once.
    load = [asyncio.create_task(env.client.get("/serve/busy/sleep?s=4")) for _ in range(6)]
    await _wait_for(lambda: _running(env, "busy") == 3, what="three running replicas")
    # Fresh requests go to the replicas with the fewest outstanding requests: the new
    # ones, not the replica still holding the load.
    probes = await asyncio.gather(*(env.client.get("/serve/busy/") for _ in range(6)))
    loaded = await asyncio.gather(*load)
    assert all(r.status_code == 200 for r in loaded)
    assert not {p.json()["pid"] for p in probes} & {r.json()["pid"] for r in loaded}

    # Idle again: back to min_replicas (downscale_delay_s is 0 here).
    await _wait_for(lambda: len(env.plane.get(env.workspace_id, "busy").live()) == 1, what="scale down")


async def test_scale_to_zero_and_wake_on_request(env: Env) -> None:
    # Deep sleep: no light sleep, so scaling to zero stops the process.
    scaling = {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after_s": 0.5, "light_sleep_s": 0}
    body = spec("sleepy", scaling=scaling)
    created = await env.client.post("/v1/deployments", json=body)
    assert created.json()["replicas"] == []

    started = time.perf_counter()
    first = await env.client.get("/serve/sleepy/")
    wake_s = time.perf_counter() - started
    print(f"\nwake from zero to first response: {wake_s * 1000:.0f} ms")
    assert first.status_code == 200

    deployment = env.plane.get(env.workspace_id, "sleepy")
    await _wait_for(lambda: not deployment.replicas, what="scale to zero")
    assert deployment.desired == 0

    again = await env.client.get("/serve/sleepy/")
    assert again.status_code == 200 and again.json()["pid"] != first.json()["pid"]


async def test_queue_overflow_is_503_with_retry_after(env: Env) -> None:
    body = spec("tight", scaling={"min_replicas": 0, "max_replicas": 1, "max_queued_requests": 1})
    # A slow start, so the second request surely arrives while the first still waits.
    body["command"] = f"sleep 1 && {body['command']}"
    await env.client.post("/v1/deployments", json=body)
    waking = asyncio.create_task(env.client.get("/serve/tight/"))
    await _wait_for(lambda: env.plane.get(env.workspace_id, "tight").queued == 1, what="a queued request")
    overflow = await env.client.get("/serve/tight/")
    assert overflow.status_code == 503
    assert overflow.headers["retry-after"] == "1"
    assert overflow.json()["error"]["code"] == "queue_full"
    assert (await waking).status_code == 200


async def test_crash_fails_in_flight_cleanly_and_restarts(env: Env) -> None:
    body = spec("fragile", scaling={"min_replicas": 2, "max_replicas": 2})
    await env.client.post("/v1/deployments", json=body)
    deployment = env.plane.get(env.workspace_id, "fragile")
    await _wait_for(lambda: _running(env, "fragile") == 2, what="two replicas")

    crashing = asyncio.create_task(env.client.get("/serve/fragile/crash?after=0.5"))
    await _wait_for(lambda: deployment.in_flight() == 1, what="the crashing request in flight")
    victim = next(r for r in deployment.replicas.values() if r.in_flight == 1)
    # The other replica has fewer outstanding requests, so it takes these.
    others = [(await env.client.get("/serve/fragile/")) for _ in range(3)]
    assert all(r.status_code == 200 for r in others)

    failed = await crashing
    assert failed.status_code == 502
    assert failed.json()["error"]["code"] == "replica_unavailable"

    await _wait_for(lambda: victim.restarts == 1 and victim.state is ReplicaState.RUNNING, what="the restart")
    assert _running(env, "fragile") == 2
    assert (await env.client.get("/serve/fragile/")).status_code == 200
