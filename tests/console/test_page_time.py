"""Page time with a workspace's worth of data: 1,000 usage records and 50
deployments. Each page is timed from request to last byte over loopback, after
one warm-up request; the median of several must stay under the budget."""

from __future__ import annotations

import statistics
import time

import httpx
from console_helpers import ALL, Platform, seed_usage

BUDGET_MS = 300.0
SAMPLES = 7
PAGES = (
    "/playground", "/models", "/usage", "/usage.csv", "/deployments", "/deployments/svc-07", "/sandboxes",
    "/fine-tuning", "/agents", "/admin", "/admin/audit",
)


def test_pages_load_within_budget_with_1000_usage_records_and_50_deployments(platform: Platform):
    with platform.admin() as admin:
        organisation = admin.post("/organisations", json={"name": "busy-org"}).json()
        workspace = admin.post("/workspaces", json={"name": "busy", "organisation_id": organisation["id"]}).json()
    tenant = platform.create_key(workspace["id"], (*ALL, "admin"))
    seed_usage(platform, tenant, records=1000, days=28)  # all within the default 30-day window
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=60) as api:
        for i in range(50):
            created = api.post("/v1/deployments", json={"name": f"svc-{i:02d}", "command": "sleep 1000"})
            assert created.status_code == 201, created.text
    client = platform.session(tenant.key)
    assert '<dd id="total-requests">1,000</dd>' in client.get("/usage").text
    assert client.get("/deployments").text.count('href="/deployments/svc-') == 50
    medians = {}
    for path in PAGES:
        assert client.get(path).status_code == 200, path  # warm-up
        times = []
        for _ in range(SAMPLES):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        medians[path] = statistics.median(times)
    print("\npage time, median of", SAMPLES, "(ms):", {p: round(t, 1) for p, t in medians.items()})
    slow = {p: t for p, t in medians.items() if t >= BUDGET_MS}
    assert not slow, f"over {BUDGET_MS} ms: {slow}"
