"""Opt-in storage of request and response bodies, seen through /v1/request_logs."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL
from tramontane.engine.defaults import DEFAULT_EMBEDDING_MODEL_NAME as EMBEDDING_MODEL
from tramontane.store import RequestLog, UsageRecord

PROMPT = [{"role": "user", "content": "Name a colour."}]


def opt_in(live_server, tenant, days: int | None) -> dict:
    with live_server.admin() as admin:
        response = admin.patch(f"/workspaces/{tenant.workspace_id}", json={"request_log_retention_days": days})
    assert response.status_code == 200, response.text
    return response.json()


def settle(live_server, request_id: str) -> None:
    """Until the server has finished with the request (its usage is recorded after
    the response is sent, its log queued just before) and every queued log is written."""
    deadline = time.monotonic() + 30
    statement = select(UsageRecord.id).where(UsageRecord.request_id == request_id)
    while time.monotonic() < deadline:
        with live_server.tenancy.store.read() as connection:
            if connection.execute(statement).first() is not None:
                live_server.tenancy.request_logs.flush()
                return
        time.sleep(0.02)
    raise AssertionError(f"request {request_id} was never metered")


def chat(client, **options) -> tuple[object, str]:
    """(the parsed response or stream, the request id)."""
    raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=PROMPT, **options)
    return raw.parse(), raw.headers["x-request-id"]


def stored_rows(live_server, workspace_id: str) -> int:
    with live_server.tenancy.store.read() as connection:
        statement = select(func.count()).select_from(RequestLog).where(RequestLog.workspace_id == workspace_id)
        return connection.execute(statement).scalar_one()


@pytest.fixture(scope="module")
def logged(live_server):
    tenant = live_server.create_tenant("request-logs-on")
    assert opt_in(live_server, tenant, 30)["request_log_retention_days"] == 30
    return tenant


def test_nothing_is_stored_by_default(live_server, openai_with_key) -> None:
    tenant = live_server.create_tenant("request-logs-default")
    with live_server.admin() as admin:
        assert admin.get(f"/workspaces/{tenant.workspace_id}").json()["request_log_retention_days"] is None
    _, request_id = chat(openai_with_key(tenant.key), max_tokens=2)
    settle(live_server, request_id)
    assert stored_rows(live_server, tenant.workspace_id) == 0
    with httpx.Client(base_url=live_server.url, headers=tenant.headers) as http:
        assert http.get("/v1/request_logs").json() == {"object": "list", "data": [], "has_more": False}


def test_a_chat_completion_is_stored_when_opted_in(live_server, openai_with_key, logged) -> None:
    completion, request_id = chat(openai_with_key(logged.key), max_tokens=4, temperature=0)
    settle(live_server, request_id)
    with httpx.Client(base_url=live_server.url, headers=logged.headers) as http:
        stored = http.get(f"/v1/request_logs/{request_id}")
    assert stored.status_code == 200, stored.text
    log = stored.json()
    assert log["request_id"] == request_id and log["key"] == f"tmt_{logged.key_id}"
    assert log["endpoint"] == "/v1/chat/completions" and log["model"] == CHAT_MODEL
    assert log["request"] == {"model": CHAT_MODEL, "messages": PROMPT, "max_tokens": 4, "temperature": 0}
    assert log["response"]["id"] == completion.id
    assert log["response"]["choices"][0]["message"]["content"] == completion.choices[0].message.content
    assert log["response"]["usage"]["completion_tokens"] == completion.usage.completion_tokens
    assert log["created_at"] <= log["completed_at"] < log["expires_at"]


def test_a_streamed_chat_completion_is_stored_assembled(live_server, openai_with_key, logged) -> None:
    stream, request_id = chat(openai_with_key(logged.key), max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    settle(live_server, request_id)
    with httpx.Client(base_url=live_server.url, headers=logged.headers) as http:
        log = http.get(f"/v1/request_logs/{request_id}").json()
    assert log["request"]["stream"] is True
    assert log["response"]["object"] == "chat.completion" and log["response"]["id"] == chunks[0].id
    assert log["response"]["choices"][0]["message"]["content"] == streamed
    assert log["response"]["usage"]["completion_tokens"] > 0


def test_embeddings_and_completions_are_stored_and_listed_newest_first(live_server, openai_with_key, logged) -> None:
    client = openai_with_key(logged.key)
    client.completions.create(model=CHAT_MODEL, prompt="Once", max_tokens=2)
    raw = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="a colour")
    embedded = raw.parse()
    settle(live_server, raw.headers["x-request-id"])
    with httpx.Client(base_url=live_server.url, headers=logged.headers) as http:
        first = http.get("/v1/request_logs", params={"limit": 1}).json()
        second = http.get("/v1/request_logs", params={"limit": 1, "before_id": first["data"][0]["id"]}).json()
    assert first["has_more"] and second["data"][0]["id"] < first["data"][0]["id"]
    newest, older = first["data"][0], second["data"][0]
    assert newest["endpoint"] == "/v1/embeddings"
    # The SDK asks for base64; the stored response is what it received.
    assert newest["request"]["encoding_format"] == "base64"
    vector = np.frombuffer(base64.b64decode(newest["response"]["data"][0]["embedding"]), dtype="<f4")
    assert vector.tolist() == pytest.approx(embedded.data[0].embedding, rel=1e-6)
    assert older["endpoint"] == "/v1/completions" and older["request"]["prompt"] == "Once"


def test_another_workspace_cannot_see_them(live_server, openai_with_key, logged) -> None:
    _, request_id = chat(openai_with_key(logged.key), max_tokens=1)
    settle(live_server, request_id)
    stranger = live_server.create_tenant("request-logs-stranger")
    with httpx.Client(base_url=live_server.url, headers=stranger.headers) as http:
        missing = http.get(f"/v1/request_logs/{request_id}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_log_not_found"
        assert http.get("/v1/request_logs").json()["data"] == []


def test_opting_out_stops_storing(live_server, openai_with_key) -> None:
    tenant = live_server.create_tenant("request-logs-off")
    opt_in(live_server, tenant, 1)
    client = openai_with_key(tenant.key)
    settle(live_server, chat(client, max_tokens=1)[1])
    assert stored_rows(live_server, tenant.workspace_id) == 1
    assert opt_in(live_server, tenant, None)["request_log_retention_days"] is None
    settle(live_server, chat(client, max_tokens=1)[1])
    assert stored_rows(live_server, tenant.workspace_id) == 1


def test_retention_is_bounded(live_server, logged) -> None:
    with live_server.admin() as admin:
        for days in (0, 3651):
            response = admin.patch(f"/workspaces/{logged.workspace_id}", json={"request_log_retention_days": days})
            assert response.status_code == 422, days


def test_dropped_logs_are_exported(live_server) -> None:
    with httpx.Client(base_url=live_server.url) as http:
        metrics = http.get("/metrics").text
    assert "tramontane_request_logs_dropped_total 0.0" in metrics
    assert "tramontane_request_logs_queued" in metrics
