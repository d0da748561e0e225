"""Through HTTP: OpenAI error bodies, capabilities, and 404 across workspaces."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tenancy_helpers import add_key, make_tenant

from tramontane.store import ApiKey, AuditEvent
from tramontane.errors import NotFound, as_api_error
from tramontane.tenancy import Capability, Tenancy, get_owned, owned

ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer nope"}, "invalid_api_key"),
        ({"Authorization": "Bearer tmt_0123456789abcdef_" + "q" * 43}, "invalid_api_key"),
    ],
)
def test_unauthenticated_requests_get_an_openai_401(client: TestClient, headers: dict, code: str) -> None:
    response = client.post("/v1/generate", json={}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS
    assert (error["type"], error["code"]) == ("authentication_error", code)


def test_every_auth_failure_is_audited(client: TestClient, tenancy: Tenancy) -> None:
    client.post("/v1/generate", json={})
    client.post("/v1/generate", json={}, headers={"Authorization": "Bearer tmt_0123456789abcdef_" + "q" * 43})
    with tenancy.store.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.failure")).all()
    assert [(e.actor, e.target, e.details["reason"]) for e in events] == [
        ("anonymous", "POST /v1/generate", "missing"),
        ("tmt_0123456789abcdef", "POST /v1/generate", "unknown_key"),
    ]
    assert all("q" * 43 not in repr((e.actor, e.target, e.details)) for e in events)


def test_revoked_key_fails_on_its_next_request(client: TestClient, tenancy: Tenancy) -> None:
    admin = tenancy.bootstrap_admin_key()
    tenant = make_tenant(tenancy, "a")
    body = {"model": "m", "prompt_tokens": 1, "completion_tokens": 1}
    assert client.post("/v1/generate", json=body, headers=tenant.headers).status_code == 200
    revoked = client.delete(f"/v1/admin/keys/{tenant.key_id}", headers={"Authorization": f"Bearer {admin}"})
    assert revoked.json()["status"] == "revoked"
    response = client.post("/v1/generate", json=body, headers=tenant.headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_revoked"


def test_missing_capability_is_403_and_audited(client: TestClient, tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a")
    response = client.post("/v1/deploy", headers=tenant.headers)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    with tenancy.store.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.denied")).one()
    assert (event.actor, event.details) == (f"tmt_{tenant.key_id}", {"missing_capability": "deploy"})
    deployer = add_key(tenancy, tenant, capabilities=frozenset({Capability.DEPLOY}))
    assert client.post("/v1/deploy", headers=deployer.headers).status_code == 200


def test_objects_of_another_workspace_are_404(client: TestClient, tenancy: Tenancy) -> None:
    alice, bob = make_tenant(tenancy, "alice"), make_tenant(tenancy, "bob")
    assert client.get(f"/v1/own-keys/{alice.key_id}", headers=alice.headers).json() == {"id": alice.key_id}
    assert client.get("/v1/own-keys", headers=alice.headers).json() == [alice.key_id]
    for missing in (bob.key_id, "0000000000000000"):
        response = client.get(f"/v1/own-keys/{missing}", headers=alice.headers)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"


def test_ownership_by_workspace_id_with_the_callers_error(tenancy: Tenancy) -> None:
    """Work done for a workspace without its key at hand (batch jobs, handoffs) finds
    objects by workspace id; a service keeps its own error code and parameter."""
    alice, bob = make_tenant(tenancy, "alice"), make_tenant(tenancy, "bob")
    with tenancy.store.session() as session:
        assert get_owned(session, ApiKey, alice.key_id, alice.workspace_id, "API key").id == alice.key_id
        assert [key.id for key in session.scalars(owned(ApiKey, alice.workspace_id))] == [alice.key_id]
        with pytest.raises(NotFound) as missing:
            get_owned(session, ApiKey, alice.key_id, bob.workspace_id, "batch job", code="job_not_found", param="id")
    assert as_api_error(missing.value).body()["error"] == {
        "message": f"No batch job with id '{alice.key_id}'",
        "type": "not_found_error",
        "param": "id",
        "code": "job_not_found",
    }


def test_non_admin_keys_cannot_reach_the_admin_api(client: TestClient, tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a")
    assert client.get("/v1/admin/workspaces", headers=tenant.headers).status_code == 403
    assert client.get("/v1/admin/workspaces").status_code == 401
