"""Schemathesis over /openapi.json: whatever the body, never a 5xx, on the
inference routes and the admin API alike (as the platform admin, whose key
reaches both).

Driven through hypothesis directly: schemathesis' pytest plugin does not run
under pytest 9 (it writes the private `Function._nodeid`).
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME, DEFAULT_EMBEDDING_MODEL_NAME
from tramontane.finetune.moderation import MODERATION_MODEL

EXAMPLES_PER_OPERATION = 30


def _aim_at_real_models(case) -> None:
    """Random model names only reach the 404 path; the real ones reach the engine,
    with generation kept short so that fuzzing stays cheap."""
    if not (isinstance(case.body, dict) and "model" in case.body):
        return
    if case.path == "/v1/ocr":
        case.body["model"] = "mistral-ocr-latest"
        return
    if case.path.endswith(("/moderations", "/classifications")):
        case.body["model"] = MODERATION_MODEL
        return
    embedding = case.path == "/v1/embeddings"
    case.body["model"] = DEFAULT_EMBEDDING_MODEL_NAME if embedding else DEFAULT_CHAT_MODEL_NAME
    if embedding:
        return
    for key in ("max_tokens", "max_completion_tokens", "min_tokens", "max_output_tokens"):
        if isinstance(case.body.get(key), int):
            case.body[key] = min(case.body[key], 4)
    # An explicit null would let the model write up to its whole context.
    if case.path == "/v1/responses":
        if case.body.get("max_output_tokens") is None:
            case.body["max_output_tokens"] = 4
    elif case.body.get("max_tokens") is None:
        case.body["max_tokens"] = 4
    # Conversations and agents carry theirs in completion_args.
    args = case.body.get("completion_args")
    if isinstance(args, dict) or "completion_args" in case.body or case.path.startswith("/v1/conversations"):
        args = args if isinstance(args, dict) else {}
        args["max_tokens"] = min(args["max_tokens"], 4) if isinstance(args.get("max_tokens"), int) else 4
        case.body["completion_args"] = args


@pytest.mark.slow
def test_no_server_errors(live_server):
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {live_server.admin_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    try:
        _fuzz(operations, headers, live_server)
    finally:
        _delete_sandboxes(live_server.url, headers)


def _fuzz(operations, headers, live_server) -> None:
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case) -> None:
            _aim_at_real_models(case)
            response = case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=120)
            if case.method == "POST" and case.path == "/v1/sandboxes" and response.status_code < 300:
                # A valid body starts a sandbox that would hold one of the server's few
                # slots for its whole timeout: after 8 the next is a rightful 503.
                httpx.delete(f"{live_server.url}/v1/sandboxes/{response.json()['sandbox_id']}", headers=headers)

        try:
            check()
        except Exception as exc:
            raise AssertionError(f"{operation.label}: {exc!r}") from exc
        live_server.wait_idle()


def _delete_sandboxes(url: str, headers: dict) -> None:
    """The valid bodies fuzzing sent created sandboxes; they would hold the shared
    server's capacity for their whole timeout."""
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        for sandbox in http.get("/v1/sandboxes").json()["sandboxes"]:
            http.delete(f"/v1/sandboxes/{sandbox['sandbox_id']}")
