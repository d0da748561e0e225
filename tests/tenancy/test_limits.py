"""Limits per key and per workspace, answered with 429 and Retry-After."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient
from tenancy_helpers import Inference, add_key, build_app, make_tenant

from tramontane.errors import Limited
from tramontane.tenancy import Limits, Tenancy
from tramontane.tenancy.limits import minute_window, month_window

BODY = {"model": "m", "prompt_tokens": 3, "completion_tokens": 2}
# 20 s into a minute: Retry-After must then be the 40 s left.
NOW = 1_800_000_000.0 + 20 - 1_800_000_000.0 % 60


@pytest.fixture
def frozen(tenancy: Tenancy) -> Tenancy:
    tenancy.limiter.clock = lambda: NOW
    return tenancy


def test_requests_per_minute_per_key(client: TestClient, frozen: Tenancy) -> None:
    tenant = make_tenant(frozen, "a", key_limits=Limits(requests_per_minute=3))
    statuses = [client.post("/v1/generate", json=BODY, headers=tenant.headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = client.post("/v1/generate", json=BODY, headers=tenant.headers)
    assert response.headers["retry-after"] == "40"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    # Another key is not affected by this key's limit.
    other = add_key(frozen, tenant)
    assert client.post("/v1/generate", json=BODY, headers=other.headers).status_code == 200


def test_workspace_limit_is_shared_by_its_keys(frozen: Tenancy) -> None:
    first = make_tenant(frozen, "a", workspace_limits=Limits(requests_per_minute=4))
    second = add_key(frozen, first)
    admitted = 0
    for tenant in (first, second, first, second, first, second):
        try:
            frozen.finish(frozen.admit(frozen.authenticate(f"Bearer {tenant.key}")))
            admitted += 1
        except Limited as exc:
            assert "workspace" in exc.message
    assert admitted == 4


def test_a_refusal_by_the_workspace_does_not_use_up_the_key(frozen: Tenancy) -> None:
    tenant = make_tenant(
        frozen, "a", key_limits=Limits(requests_per_minute=2), workspace_limits=Limits(requests_per_minute=0)
    )
    principal = frozen.authenticate(f"Bearer {tenant.key}")
    for _ in range(3):
        with pytest.raises(Limited):
            frozen.admit(principal)
    with frozen.store.read() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM rate_counters").scalar() == 0


def test_the_window_resets_on_the_next_minute(frozen: Tenancy) -> None:
    tenant = make_tenant(frozen, "a", key_limits=Limits(requests_per_minute=1))
    principal = frozen.authenticate(f"Bearer {tenant.key}")
    frozen.admit(principal)
    with pytest.raises(Limited):
        frozen.admit(principal)
    frozen.limiter.clock = lambda: NOW + 40
    frozen.admit(principal)
    # The old window's row was swept when the new one opened.
    with frozen.store.read() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM rate_counters").scalar() == 1


def test_tokens_per_minute(client: TestClient, frozen: Tenancy) -> None:
    tenant = make_tenant(frozen, "a", key_limits=Limits(tokens_per_minute=10))
    statuses = [client.post("/v1/generate", json=BODY, headers=tenant.headers).status_code for _ in range(3)]
    # 5 tokens each: the third request starts with 10 recorded, at the limit.
    assert statuses == [200, 200, 429]


def test_monthly_budget_is_insufficient_quota_until_next_month(client: TestClient, frozen: Tenancy) -> None:
    tenant = make_tenant(frozen, "a", workspace_limits=Limits(monthly_token_budget=5))
    assert client.post("/v1/generate", json=BODY, headers=tenant.headers).status_code == 200
    response = client.post("/v1/generate", json=BODY, headers=tenant.headers)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert int(response.headers["retry-after"]) == month_window(NOW)[1] - int(NOW)


def test_concurrency_limit_holds_until_the_response_is_sent(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a", key_limits=Limits(max_concurrent_requests=1))
    app = build_app(tenancy)
    entered, release = asyncio.Event(), asyncio.Event()

    @app.post("/v1/slow")
    async def slow(principal: Inference) -> dict:
        entered.set()
        await release.wait()
        return {}

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(client.post("/v1/slow", headers=tenant.headers))
            await asyncio.wait_for(entered.wait(), 30)  # it holds the only slot
            second = await client.post("/v1/generate", json=BODY, headers=tenant.headers)
            assert second.headers["retry-after"] == "1"
            release.set()
            third = (await first).status_code
            fourth = await client.post("/v1/generate", json=BODY, headers=tenant.headers)
            return [second.status_code, third, fourth.status_code]

    assert asyncio.run(scenario()) == [429, 200, 200]


def test_leases_of_a_crashed_process_expire(frozen: Tenancy) -> None:
    tenant = make_tenant(frozen, "a", workspace_limits=Limits(max_concurrent_requests=2))
    principal = frozen.authenticate(f"Bearer {tenant.key}")
    frozen.admit(principal)
    frozen.admit(principal)  # never finished: as if the server died
    with pytest.raises(Limited) as refused:
        frozen.admit(principal)
    assert refused.value.code == "concurrency_limit_exceeded"
    frozen.limiter.clock = lambda: NOW + frozen.limiter.lease_ttl_s + 1
    frozen.admit(principal)


def test_unlimited_keys_touch_no_counters(frozen: Tenancy) -> None:
    tenant = make_tenant(frozen, "a")
    admitted = frozen.admit(frozen.authenticate(f"Bearer {tenant.key}"))
    assert admitted.ticket is not None and admitted.ticket.lease_id is None
    with frozen.store.read() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM rate_counters").scalar() == 0


def test_windows() -> None:
    assert minute_window(NOW) == (int(NOW) - 20, int(NOW) + 40)
    start, end = month_window(1_700_000_000)  # 2023-11-14
    assert (start, end) == (1_698_796_800, 1_701_388_800)  # 2023-11-01 .. 2023-12-01
