"""Tenancy through the live server and the official SDKs: keys, capabilities,
isolation between organisations, revocation mid-stream, metering and limits."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from mistralai.client import errors as mistral_errors
from sqlalchemy import select

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL
from tramontane.engine.defaults import DEFAULT_EMBEDDING_MODEL_NAME as EMBEDDING_MODEL
from tramontane.store import UsageRecord

HI = [{"role": "user", "content": "hi"}]
UNKNOWN_KEY = "tmt_0123456789abcdef_" + "q" * 43

INFERENCE_ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/fim/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", f"/v1/models/{CHAT_MODEL}"),
    ("DELETE", f"/v1/models/{CHAT_MODEL}"),
]


def _usage_report(live_server, **query) -> list[dict]:
    with live_server.admin() as admin:
        response = admin.get("/usage", params=query)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _wait_for_requests(live_server, key_id: str, expected: int) -> dict:
    """The key's usage totals once `expected` requests are in: usage is recorded
    just after each response has been sent, so it can trail the client a little."""
    deadline = time.monotonic() + 10
    while True:
        rows = _usage_report(live_server, key_id=key_id, group_by="key")
        if rows and rows[0]["requests"] >= expected or time.monotonic() > deadline:
            assert rows and rows[0]["requests"] == expected, rows
            return rows[0]
        time.sleep(0.05)


def test_probes_are_open_and_every_inference_route_needs_a_key(live_server):
    with httpx.Client(base_url=live_server.url, timeout=30) as anonymous:
        for probe in ("/health", "/ready", "/metrics"):
            assert anonymous.get(probe).status_code == 200, probe
        for method, path in INFERENCE_ROUTES:
            response = anonymous.request(method, path, json={})
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "missing_api_key"


def test_missing_and_bad_keys_are_401_in_both_sdks(openai_with_key, mistral_with_key):
    # The openai SDK insists on a key; omitting its header is how it sends none.
    no_key = {"extra_headers": {"Authorization": openai.omit}}
    for key, options, code in (
        ("unused", no_key, "missing_api_key"),
        ("nope", {}, "invalid_api_key"),
        (UNKNOWN_KEY, {}, "invalid_api_key"),
    ):
        with pytest.raises(openai.AuthenticationError) as info:
            openai_with_key(key).chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=1, **options)
        assert info.value.code == code
        with pytest.raises(openai.AuthenticationError):
            openai_with_key(key).embeddings.create(model=EMBEDDING_MODEL, input="hi", **options)
    for key in (None, "nope", UNKNOWN_KEY):
        with pytest.raises(mistral_errors.SDKError) as mistral_info:
            mistral_with_key(key).chat.complete(model=CHAT_MODEL, messages=HI, max_tokens=1)
        assert mistral_info.value.status_code == 401


def test_a_key_without_the_inference_capability_is_403(live_server, openai_with_key, mistral_with_key):
    sandbox_only = live_server.create_key(live_server.tenant.workspace_id, ("sandbox",))
    with pytest.raises(openai.PermissionDeniedError) as info:
        openai_with_key(sandbox_only.key).chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=1)
    assert info.value.code == "insufficient_capability"
    with pytest.raises(openai.PermissionDeniedError):
        openai_with_key(sandbox_only.key).models.list()
    with pytest.raises(mistral_errors.SDKError) as mistral_info:
        mistral_with_key(sandbox_only.key).embeddings.create(model=EMBEDDING_MODEL, inputs=["hi"])
    assert mistral_info.value.status_code == 403
    # Nor does an inference key reach the admin API.
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers) as client:
        assert client.get("/v1/admin/workspaces").status_code == 403


def test_another_organisations_objects_are_404_like_missing_ones(live_server, openai_with_key):
    """An organisation's admin key, asked about another organisation's ids, gets
    exactly what it gets for ids that do not exist: nothing tells them apart."""
    with live_server.admin() as platform:
        ours, theirs = (platform.post("/organisations", json={"name": n}).json()["id"] for n in ("ours", "theirs"))
        our_ws, their_ws = (
            platform.post("/workspaces", json={"name": "main", "organisation_id": org}).json()["id"]
            for org in (ours, theirs)
        )
    our_admin = live_server.create_key(our_ws, ("admin", "inference"))
    their_key = live_server.create_key(their_ws)
    openai_with_key(their_key.key).embeddings.create(model=EMBEDDING_MODEL, input="their usage")
    _wait_for_requests(live_server, their_key.key_id, 1)

    def calls(org: str, ws: str, key: str) -> list[tuple[str, str, dict]]:
        new_key = {"name": "stolen", "capabilities": ["inference"]}
        return [
            ("GET", f"/organisations/{org}", {}),
            ("PATCH", f"/organisations/{org}", {"json": {"name": "renamed"}}),
            ("DELETE", f"/organisations/{org}", {}),
            ("GET", "/workspaces", {"params": {"organisation_id": org}}),
            ("GET", f"/workspaces/{ws}", {}),
            ("PATCH", f"/workspaces/{ws}", {"json": {"limits": {"requests_per_minute": 0}}}),
            ("DELETE", f"/workspaces/{ws}", {}),
            ("GET", f"/workspaces/{ws}/keys", {}),
            ("POST", f"/workspaces/{ws}/keys", {"json": new_key}),
            ("GET", f"/keys/{key}", {}),
            ("DELETE", f"/keys/{key}", {}),
            ("GET", "/usage", {"params": {"organisation_id": org}}),
            ("GET", "/usage", {"params": {"workspace_id": ws}}),
            ("GET", "/usage", {"params": {"key_id": key}}),
            ("GET", "/audit", {"params": {"organisation_id": org}}),
            ("GET", "/audit", {"params": {"workspace_id": ws}}),
        ]

    existing = calls(theirs, their_ws, their_key.key_id)
    made_up = calls("org_" + "0" * 16, "ws_" + "0" * 16, "0" * 16)
    with httpx.Client(base_url=f"{live_server.url}/v1/admin", headers=our_admin.headers) as client:
        for (method, path, options), (_, fake_path, fake_options) in zip(existing, made_up, strict=True):
            real, fake = client.request(method, path, **options), client.request(method, fake_path, **fake_options)
            assert real.status_code == fake.status_code == 404, (method, path, real.text)
            real_error, fake_error = real.json()["error"], fake.json()["error"]
            assert (real_error["type"], real_error["code"]) == (fake_error["type"], fake_error["code"])
        # Lists without a filter show only the caller's organisation.
        assert [o["id"] for o in client.get("/organisations").json()["data"]] == [ours]
        assert [w["id"] for w in client.get("/workspaces").json()["data"]] == [our_ws]
        usage = client.get("/usage", params={"group_by": "workspace"}).json()["data"]
        assert their_ws not in {row["workspace"] for row in usage}
    # None of it touched the other organisation.
    openai_with_key(their_key.key).models.list()
    with live_server.admin() as platform:
        assert platform.get(f"/organisations/{theirs}").json()["name"] == "theirs"
        assert platform.get(f"/workspaces/{their_ws}").json()["limits"]["requests_per_minute"] is None
        assert [k["id"] for k in platform.get(f"/workspaces/{their_ws}/keys").json()["data"]] == [their_key.key_id]


def test_revoking_a_key_cuts_its_running_stream(live_server, openai_with_key):
    live_server.wait_idle()
    doomed = live_server.create_key(live_server.tenant.workspace_id)
    client = openai_with_key(doomed.key)
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Count to a thousand."}],
        max_tokens=4000,
        stream=True,
        extra_body={"min_tokens": 4000},
    )
    chunks = iter(stream)
    received = 0
    # Past the first re-check of the key, which a valid key passes.
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        next(chunks)
        received += 1
    with live_server.admin() as admin:
        assert admin.delete(f"/keys/{doomed.key_id}").json()["status"] == "revoked"
    revoked_at = time.monotonic()

    with pytest.raises(openai.AuthenticationError) as refused:
        client.models.list()
    assert refused.value.code == "api_key_revoked"
    with pytest.raises(openai.APIError) as cut:
        for _ in chunks:
            received += 1
    assert cut.value.code == "api_key_revoked"
    assert time.monotonic() - revoked_at < 5
    assert received < 4000
    live_server.wait_idle(timeout=5)  # the generation was aborted, not left running

    # What was generated until the cut is metered.
    row = _wait_for_requests(live_server, doomed.key_id, 1)
    assert received - 1 <= row["completion_tokens"] < 4000  # the first chunk carries no token


def test_requests_whose_client_left_are_metered_with_what_was_generated(live_server):
    live_server.wait_idle()
    tenant = live_server.create_tenant("leavers")
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": 4000,
        "min_tokens": 4000,
    }
    with httpx.Client(base_url=live_server.url, headers=tenant.headers, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            lines = response.iter_lines()
            received = sum(1 for _, line in zip(range(10), lines, strict=False) if line)
    streamed = _wait_for_requests(live_server, tenant.key_id, 1)
    assert received - 1 <= streamed["completion_tokens"] < 4000
    live_server.wait_idle()
    with httpx.Client(base_url=live_server.url, headers=tenant.headers, timeout=httpx.Timeout(30, read=1.0)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=body)
    both = _wait_for_requests(live_server, tenant.key_id, 2)
    assert streamed["completion_tokens"] < both["completion_tokens"] < streamed["completion_tokens"] + 4000


def test_usage_report_equals_what_the_sdks_were_told(live_server, openai_with_key, mistral_with_key):
    tenant = live_server.create_tenant("metering")
    oai, mistral = openai_with_key(tenant.key), mistral_with_key(tenant.key)
    told: dict[str, list[int]] = {CHAT_MODEL: [0, 0, 0], EMBEDDING_MODEL: [0, 0, 0]}
    request_ids = []

    def add(model: str, prompt: int, completion: int, total: int) -> None:
        assert prompt + completion == total
        told[model] = [a + b for a, b in zip(told[model], (prompt, completion, 1), strict=True)]

    chat = oai.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=5)
    add(CHAT_MODEL, chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens)
    request_ids.append(chat._request_id)
    stream = oai.chat.completions.create(
        model=CHAT_MODEL, messages=HI, max_tokens=6, n=2, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream][-1]
    add(CHAT_MODEL, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    request_ids.append(stream.response.headers["x-request-id"])
    completion = oai.completions.create(model=CHAT_MODEL, prompt=["The sea", "The sky is"], max_tokens=4)
    add(CHAT_MODEL, completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens)
    stream = oai.completions.create(
        model=CHAT_MODEL, prompt="Once upon", max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream][-1]
    add(CHAT_MODEL, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    embedded = oai.embeddings.create(model=EMBEDDING_MODEL, input=["the sea", "the wind from the north"])
    add(EMBEDDING_MODEL, embedded.usage.prompt_tokens, 0, embedded.usage.total_tokens)
    request_ids.append(embedded._request_id)

    answer = mistral.chat.complete(model=CHAT_MODEL, messages=HI, max_tokens=4)
    add(CHAT_MODEL, answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens)
    last = list(mistral.chat.stream(model=CHAT_MODEL, messages=HI, max_tokens=4))[-1].data.usage
    add(CHAT_MODEL, last.prompt_tokens, last.completion_tokens, last.total_tokens)
    vectors = mistral.embeddings.create(model=EMBEDDING_MODEL, inputs=["bonjour"])
    add(EMBEDDING_MODEL, vectors.usage.prompt_tokens, 0, vectors.usage.total_tokens)

    # Refused requests use nothing and record nothing.
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=CHAT_MODEL, messages=HI, temperature=5)
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="nope", input="x")

    requests = sum(counts[2] for counts in told.values())
    totals = _wait_for_requests(live_server, tenant.key_id, requests)
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (
        sum(counts[0] for counts in told.values()),
        sum(counts[1] for counts in told.values()),
    )
    assert totals["total_tokens"] == totals["prompt_tokens"] + totals["completion_tokens"]
    assert totals["mean_latency_ms"] > 0 and totals["energy_wh"] > 0
    per_model = _usage_report(live_server, workspace_id=tenant.workspace_id, group_by="model")
    assert {r["model"]: [r["prompt_tokens"], r["completion_tokens"], r["requests"]] for r in per_model} == told

    with live_server.tenancy.store.session() as session:
        recorded = session.scalars(select(UsageRecord.request_id).where(UsageRecord.api_key_id == tenant.key_id)).all()
    assert len(set(recorded)) == requests and set(request_ids) <= set(recorded)


def test_a_workspace_rate_limit_is_a_429_with_retry_after(live_server, openai_with_key, mistral_with_key):
    tenant = live_server.create_tenant("limited")
    with live_server.admin() as admin:
        response = admin.patch(f"/workspaces/{tenant.workspace_id}", json={"limits": {"requests_per_minute": 2}})
        assert response.json()["limits"]["requests_per_minute"] == 2
    client = openai_with_key(tenant.key)
    served = 0
    # A minute boundary between two calls resets the window: allow for one.
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(5):
            client.models.list()
            served += 1
    assert 2 <= served <= 4
    assert info.value.code == "rate_limit_exceeded"
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
    with pytest.raises(mistral_errors.SDKError) as mistral_info:
        for _ in range(3):
            mistral_with_key(tenant.key).models.list()
    assert mistral_info.value.status_code == 429
