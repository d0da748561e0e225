"""A client that goes away must not leave its request running in the engine."""

from __future__ import annotations

import json
import socket
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


# -- every generating route, over a raw socket closed while the model is generating --------

COUNT = "Count from one to one thousand, writing every number in words."


def _wait_generating(live_server, tokens: int, timeout: float = 30.0) -> None:
    """Until the one request in the engine has generated `tokens` tokens."""
    deadline = time.monotonic() + timeout
    while True:
        requests = list(live_server.engine.engine.requests.values())  # read across threads: sizes only
        if requests and requests[0].seqs[0].num_output_tokens >= tokens:
            return
        assert time.monotonic() < deadline, "the request did not generate"
        time.sleep(0.02)


def _post_and_leave(live_server, path: str, body: dict) -> float:
    """Sends the request, waits until its generation runs and has made tokens, then
    closes the connection; returns how long the engine took to drop it."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {live_server.tenant.key}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    url = httpx.URL(live_server.url)
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(head.encode() + data)
        _wait_generating(live_server, tokens=5)
        assert live_server.engine.stats().num_running == 1, "the generation ended on its own: a longer one is needed"
    left = time.monotonic()
    _wait_running(live_server, 0, timeout=10.0)
    return time.monotonic() - left


def _conversation(live_server) -> tuple[str, str]:
    """A stored conversation with one short answer: its id and its first entry's id."""
    body = {"model": CHAT_MODEL, "inputs": "Say hi.", "completion_args": {"max_tokens": 2}}
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=60) as client:
        started = client.post("/v1/conversations", json=body)
        assert started.status_code == 200, started.text
        conversation_id = started.json()["conversation_id"]
        history = client.get(f"/v1/conversations/{conversation_id}/history").json()
    return conversation_id, history["entries"][0]["id"]


def _history(live_server, conversation_id: str) -> list[dict]:
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=30) as client:
        return client.get(f"/v1/conversations/{conversation_id}/history").json()["entries"]


LONG_RUN = {"completion_args": {"max_tokens": 4000, "temperature": 0.0}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completions_abort_when_the_client_leaves(live_server, stream):
    live_server.wait_idle()
    body = {"model": CHAT_MODEL, "prompt": COUNT, "max_tokens": 4000, "min_tokens": 4000, "stream": stream}
    assert _post_and_leave(live_server, "/v1/completions", body) < 2.0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_aborts_within_two_seconds_of_the_client_leaving(live_server, stream):
    live_server.wait_idle()
    assert _post_and_leave(live_server, "/v1/chat/completions", {**LONG, "stream": stream}) < 2.0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_conversation_start_aborts_and_keeps_the_answer_so_far(live_server, stream):
    live_server.wait_idle()
    body = {"model": CHAT_MODEL, "inputs": COUNT, "stream": stream, "name": f"left-{stream}", **LONG_RUN}
    assert _post_and_leave(live_server, "/v1/conversations", body) < 2.0
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=30) as client:
        found = [c for c in client.get("/v1/conversations").json() if c.get("name") == f"left-{stream}"]
    assert len(found) == 1
    # The stored conversation holds the question and the answer as far as it got,
    # marked as cut short: an entry never completed.
    entries = _history(live_server, found[0]["id"])
    assert [e["type"] for e in entries] == ["message.input", "message.output"]
    assert entries[1]["content"] and entries[1]["completed_at"] is None
    assert entries[0]["completed_at"] is not None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_conversation_append_aborts(live_server, stream):
    conversation_id, _ = _conversation(live_server)
    live_server.wait_idle()
    body = {"inputs": COUNT, "stream": stream, **LONG_RUN}
    assert _post_and_leave(live_server, f"/v1/conversations/{conversation_id}", body) < 2.0
    history = _history(live_server, conversation_id)
    assert history[-1]["type"] == "message.output" and history[-1]["completed_at"] is None
    assert history[1]["completed_at"] is not None  # the first, whole answer


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_conversation_restart_aborts(live_server, stream):
    conversation_id, first_entry = _conversation(live_server)
    live_server.wait_idle()
    body = {"from_entry_id": first_entry, "inputs": COUNT, "stream": stream, **LONG_RUN}
    assert _post_and_leave(live_server, f"/v1/conversations/{conversation_id}/restart", body) < 2.0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_abort_when_the_client_leaves(live_server, stream):
    live_server.wait_idle()
    body = {"model": CHAT_MODEL, "input": COUNT, "max_output_tokens": 4000, "temperature": 0.0, "stream": stream}
    assert _post_and_leave(live_server, "/v1/responses", body) < 2.0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_agents_completions_abort_when_the_client_leaves(live_server, stream):
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=30) as client:
        created = client.post("/v1/agents", json={"model": CHAT_MODEL, "name": "counter"})
        assert created.status_code == 200, created.text
    live_server.wait_idle()
    body = {
        "agent_id": created.json()["id"],
        "messages": [{"role": "user", "content": COUNT}],
        "max_tokens": 4000,
        "min_tokens": 4000,
        "stream": stream,
    }
    assert _post_and_leave(live_server, "/v1/agents/completions", body) < 2.0
