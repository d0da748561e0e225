"""Past its limits a client gets a clean 429 or 503 with Retry-After, never a timeout."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator

import httpx

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL
from tramontane.tenancy import AdmissionLimits

LONG = {
    "model": CHAT_MODEL,
    "messages": [{"role": "user", "content": "Count to a thousand."}],
    "max_tokens": 4000,
    "min_tokens": 4000,
    "stream": True,
}
SHORT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@contextlib.contextmanager
def admission(live_server, limits: AdmissionLimits) -> Iterator[None]:
    gate = live_server.tenancy.gate
    before, gate.limits = gate.limits, limits
    try:
        yield
    finally:
        gate.limits = before


def test_a_workspace_past_its_slots_and_queue_gets_a_429_others_do_not(live_server):
    live_server.wait_idle()
    other = live_server.create_tenant("overload-other")
    with admission(live_server, AdmissionLimits(max_concurrent=1, max_queued=0)):
        with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=60) as client:
            with client.stream("POST", "/v1/chat/completions", json=LONG) as held:
                assert held.status_code == 200
                lines = held.iter_lines()  # kept: a dropped iterator closes the stream
                next(lines)
                started = time.monotonic()
                refused = client.post("/v1/chat/completions", json=SHORT)
                assert time.monotonic() - started < 5  # at once, not after a wait
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "workspace_queue_full"
                assert float(refused.headers["retry-after"]) > 0
                with httpx.Client(base_url=live_server.url, headers=other.headers, timeout=60) as theirs:
                    assert theirs.post("/v1/chat/completions", json=SHORT).status_code == 200
        # The slot came back with the stream's end.
        with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=60) as client:
            deadline = time.monotonic() + 10
            while (status := client.post("/v1/chat/completions", json=SHORT).status_code) == 429:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert status == 200


def test_a_queued_request_waits_for_a_slot(live_server):
    live_server.wait_idle()
    with admission(live_server, AdmissionLimits(max_concurrent=1, max_queued=1, max_queue_wait_s=0.5)):
        with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=60) as client:
            with client.stream("POST", "/v1/chat/completions", json=LONG) as held:
                lines = held.iter_lines()
                next(lines)
                late = client.post("/v1/chat/completions", json=SHORT)
                assert late.status_code == 429 and late.json()["error"]["code"] == "workspace_queue_timeout"
                assert "retry-after" in late.headers


def test_a_saturated_engine_answers_503_with_retry_after(live_server):
    live_server.wait_idle()
    config = live_server.engine.engine.config
    before = dataclasses.replace(config)
    config.max_queue_wait_s = 0.0  # every interactive request "waited too long"
    try:
        with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=60) as client:
            shed = client.post("/v1/chat/completions", json=SHORT)
            assert shed.status_code == 503
            assert shed.json()["error"]["code"] == "engine_overloaded"
            assert float(shed.headers["retry-after"]) >= 1
    finally:
        config.max_queue_wait_s = before.max_queue_wait_s
    live_server.wait_idle()
