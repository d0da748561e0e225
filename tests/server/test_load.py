"""200 concurrent streaming requests. Every stream either completes (chunks of one
completion, a finish reason, `[DONE]`) or is refused before it starts with a clean
429/503: an OpenAI error body and a Retry-After. Nothing else: no 5xx, no broken or
truncated stream, no error event, no refusal while the server has room."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL

CONCURRENCY = 200
WORKSPACE_CONCURRENCY = 16  # the limited workspace's max_concurrent_requests
DEADLINE_S = 300  # the whole burst; a stuck stream fails the test instead of hanging it

COMPLETED = "completed"


async def stream_one(client: httpx.AsyncClient, i: int) -> str:
    """COMPLETED, or the status of a clean refusal; any other outcome fails."""
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": f"Name a colour ({i})."}],
        "max_tokens": 4,
        "stream": True,
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            assert_clean_refusal(response)
            return str(response.status_code)
        lines = [line async for line in response.aiter_lines() if line]
    assert_complete_stream(lines)
    return COMPLETED


def assert_clean_refusal(response: httpx.Response) -> None:
    assert response.status_code in (429, 503), (response.status_code, response.text)
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["code"], error


def assert_complete_stream(lines: list[str]) -> None:
    assert lines and lines[-1] == "data: [DONE]", lines[-3:]
    assert all(line.startswith("data: ") for line in lines), lines
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert not any("error" in chunk for chunk in chunks), chunks
    assert len({chunk["id"] for chunk in chunks}) == 1  # one completion, not pieces of several
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]]
    assert finishes[-1] in ("stop", "length"), finishes
    assert all(reason is None for reason in finishes[:-1]), finishes


async def burst(url: str, headers: dict[str, str]) -> Counter[str]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=DEADLINE_S, limits=limits) as client:
        outcomes = asyncio.gather(*(stream_one(client, i) for i in range(CONCURRENCY)))
        return Counter(await asyncio.wait_for(outcomes, DEADLINE_S))


@pytest.mark.slow
async def test_every_stream_completes_when_the_server_has_room(live_server):
    """The engine holds 200 requests (running plus waiting) and the workspace may have
    200 in flight (above the server's per-workspace default), so none may be refused."""
    config = live_server.engine.engine.config  # the AsyncEngine's LLMEngine
    assert config.max_num_seqs + config.max_waiting_requests >= CONCURRENCY
    tenant = live_server.create_tenant("load-roomy")
    with live_server.admin() as admin:
        limits = {"max_concurrent_requests": CONCURRENCY}
        admin.patch(f"/workspaces/{tenant.workspace_id}", json={"limits": limits}).raise_for_status()
    live_server.wait_idle()
    outcomes = await burst(live_server.url, tenant.headers)
    assert outcomes == {COMPLETED: CONCURRENCY}
    live_server.wait_idle()


@pytest.mark.slow
async def test_streams_over_a_concurrency_limit_are_refused_cleanly(live_server):
    """A workspace limited to 16 requests in flight: the first 16 always get a slot,
    and every other stream either completes or gets a clean 429."""
    tenant = live_server.create_tenant("load-limited")
    with live_server.admin() as admin:
        limits = {"max_concurrent_requests": WORKSPACE_CONCURRENCY}
        admin.patch(f"/workspaces/{tenant.workspace_id}", json={"limits": limits}).raise_for_status()
    live_server.wait_idle()
    outcomes = await burst(live_server.url, tenant.headers)
    assert set(outcomes) <= {COMPLETED, "429"}, outcomes
    assert outcomes[COMPLETED] >= WORKSPACE_CONCURRENCY, outcomes
    live_server.wait_idle()
