"""A client that goes away must not leave its request running in the engine."""

from __future__ import annotations

import time

import httpx
import pytest

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL

# min_tokens keeps the model from ending early, so only the disconnect can stop it.
LONG = {
    "model": CHAT_MODEL,
    "messages": [{"role": "user", "content": "Count to a thousand."}],
    "max_tokens": 4000,
    "min_tokens": 4000,
}


def _wait_running(live_server, expected: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while live_server.engine.stats().num_running != expected:
        assert time.monotonic() < deadline, f"num_running stuck at {live_server.engine.stats().num_running}"
        time.sleep(0.02)


def test_stream_disconnect_aborts(live_server):
    live_server.wait_idle()
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
            assert live_server.engine.stats().num_running == 1
    # Leaving both blocks closed the connection.
    _wait_running(live_server, 0)


def test_non_streamed_disconnect_aborts(live_server):
    live_server.wait_idle()
    timeout = httpx.Timeout(30, read=1.0)
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=timeout) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=LONG)
    _wait_running(live_server, 0)


def test_disconnect_while_queued_aborts(live_server):
    """Several streams opened and dropped at once, some still waiting for their first token."""
    live_server.wait_idle()
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=30) as client:
        body = {**LONG, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            next(response.iter_lines())
    _wait_running(live_server, 0)
    live_server.wait_idle()
