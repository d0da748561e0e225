"""What a deployment's owner and operator see: events (a crash loop backing off),
per-deployment request metrics for Prometheus, and live logs."""

from __future__ import annotations

import asyncio
import re
import time

from control_helpers import Env, spec
from prometheus_client import CollectorRegistry, generate_latest

from tramontane.control.metrics import DeploymentCollector


async def _wait_for(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_crash_loop_backs_off_exponentially_in_events(env: Env) -> None:
    assert (await env.client.post("/v1/deployments", json=spec("crashy", command="exit 7"))).status_code == 201
    deployment = env.plane.get(env.workspace_id, "crashy")
    await _wait_for(lambda: any(r.restarts >= 4 for r in deployment.replicas.values()), what="four crashes")
    events = (await env.client.get("/v1/deployments/crashy/events")).json()["data"]
    crashes = [e["message"] for e in events if e["kind"] == "crashed"]
    delays = [float(re.search(r"in ([\d.]+) s$", m).group(1)) for m in crashes]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8], crashes
    assert all("exited with status 7" in m for m in crashes), crashes
    assert events[0]["kind"] == "revision_created" and events[0]["revision"] == 1
    # Bounded: a newest-first limit.
    assert len((await env.client.get("/v1/deployments/crashy/events", params={"limit": 2})).json()["data"]) == 2


async def test_request_metrics_by_deployment_and_status(env: Env) -> None:
    assert (await env.client.post("/v1/deployments", json=spec("counted"))).status_code == 201
    for _ in range(3):
        assert (await env.client.get("/serve/counted/")).status_code == 200
    # The replica dies mid-request: the client gets a 502.
    assert (await env.client.get("/serve/counted/crash")).status_code == 502

    registry = CollectorRegistry()
    registry.register(DeploymentCollector(env.plane))
    text = generate_latest(registry).decode()
    ours = rf'deployment="counted",status="{{}}",workspace="{env.workspace_id}"'
    assert re.search(r"tramontane_deployment_requests_total\{" + ours.format(200) + r"\} 3\.0", text), text
    assert re.search(r'tramontane_deployment_requests_total\{[^}]*status="502"[^}]*\} 1\.0', text), text
    count = r'tramontane_deployment_request_duration_seconds_count\{[^}]*deployment="counted"[^}]*\} 4\.0'
    assert re.search(count, text)
    assert re.search(r'tramontane_deployment_request_duration_seconds_bucket\{[^}]*le="\+Inf"[^}]*\} 4\.0', text)
    assert re.search(r'tramontane_deployment_revision\{[^}]*deployment="counted"[^}]*\} 1\.0', text)

    assert (await env.client.delete("/v1/deployments/counted")).status_code == 200
    assert "counted" not in generate_latest(registry).decode()
