"""200 concurrent streaming requests: each completes, or is refused with 429/503 and
Retry-After; never a 5xx otherwise, never a broken stream."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL

CONCURRENCY = 200


@pytest.mark.slow
async def test_concurrent_streams(live_server):
    live_server.wait_idle()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = live_server.tenant.headers
    async with httpx.AsyncClient(base_url=live_server.url, headers=headers, timeout=600, limits=limits) as client:

        async def one(i: int) -> int:
            body = {
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": f"Name a colour ({i})."}],
                "max_tokens": 4,
                "stream": True,
            }
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = [line async for line in response.aiter_lines() if line]
            if response.status_code != 200:
                assert response.status_code in (429, 503), lines
                assert int(response.headers["retry-after"]) >= 1
                return response.status_code
            assert lines[-1] == "data: [DONE]"
            chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
            assert not any("error" in chunk for chunk in chunks)
            assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
            return 200

        statuses = await asyncio.gather(*(one(i) for i in range(CONCURRENCY)))
    assert statuses.count(200) > 0
    assert set(statuses) <= {200, 429, 503}
    live_server.wait_idle()
