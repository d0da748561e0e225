"""The admin API: CRUD, keys shown once, scoping to the caller's organisation, audit."""

from __future__ import annotations

from fastapi.testclient import TestClient
from tenancy_helpers import make_tenant

from tramontane.tenancy import Capability, Tenancy


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_platform_admin_manages_organisations_workspaces_and_keys(client: TestClient, tenancy: Tenancy) -> None:
    admin = _bearer(tenancy.bootstrap_admin_key() or "")
    org = client.post("/v1/admin/organisations", json={"name": "acme"}, headers=admin)
    assert org.status_code == 201
    org_id = org.json()["id"]
    assert client.post("/v1/admin/organisations", json={"name": "acme"}, headers=admin).status_code == 409
    ws = client.post(
        "/v1/admin/workspaces",
        json={"name": "research", "organisation_id": org_id, "limits": {"requests_per_minute": 60}},
        headers=admin,
    ).json()
    assert ws["limits"]["requests_per_minute"] == 60
    patched = client.patch(
        f"/v1/admin/workspaces/{ws['id']}", json={"limits": {"tokens_per_minute": 1000}}, headers=admin
    ).json()
    assert patched["limits"] == {
        "requests_per_minute": 60,
        "tokens_per_minute": 1000,
        "max_concurrent_requests": None,
        "monthly_token_budget": None,
    }
    created = client.post(
        f"/v1/admin/workspaces/{ws['id']}/keys",
        json={"name": "ci", "capabilities": ["inference", "admin"], "expires_in_s": 3600},
        headers=admin,
    )
    assert created.status_code == 201
    key = created.json()
    assert key["key"].startswith(key["prefix"] + "_") and key["status"] == "active"
    listed = client.get(f"/v1/admin/workspaces/{ws['id']}/keys", headers=admin).json()["data"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert "key" not in listed[0] and key["key"] not in str(listed)
    assert client.get(f"/v1/admin/keys/{key['id']}", headers=admin).json()["prefix"] == key["prefix"]
    assert client.delete(f"/v1/admin/keys/{key['id']}", headers=admin).json()["status"] == "revoked"
    actions = [e["action"] for e in client.get("/v1/admin/audit", headers=admin).json()["data"]]
    for action in ("organisation.create", "workspace.create", "workspace.update", "key.create", "key.revoke"):
        assert action in actions


def test_an_organisation_admin_sees_only_its_organisation(client: TestClient, tenancy: Tenancy) -> None:
    tenancy.bootstrap_admin_key()
    acme = make_tenant(tenancy, "acme", capabilities=frozenset({Capability.ADMIN, Capability.INFERENCE}))
    other = make_tenant(tenancy, "other")
    headers = _bearer(acme.key)
    organisations = client.get("/v1/admin/organisations", headers=headers).json()["data"]
    assert [o["id"] for o in organisations] == [acme.organisation_id]
    workspaces = client.get("/v1/admin/workspaces", headers=headers).json()["data"]
    assert [w["id"] for w in workspaces] == [acme.workspace_id]
    for path in (
        f"/v1/admin/workspaces/{other.workspace_id}",
        f"/v1/admin/organisations/{other.organisation_id}",
        f"/v1/admin/keys/{other.key_id}",
        f"/v1/admin/workspaces/{other.workspace_id}/keys",
        f"/v1/admin/usage?workspace_id={other.workspace_id}",
        f"/v1/admin/audit?workspace_id={other.workspace_id}",
    ):
        assert client.get(path, headers=headers).status_code == 404, path
    assert client.delete(f"/v1/admin/workspaces/{other.workspace_id}", headers=headers).status_code == 404
    assert client.delete(f"/v1/admin/keys/{other.key_id}", headers=headers).status_code == 404
    assert client.post("/v1/admin/organisations", json={"name": "x"}, headers=headers).status_code == 403
    # It may create keys in its own workspaces, but not grant what it lacks.
    grant = client.post(
        f"/v1/admin/workspaces/{acme.workspace_id}/keys",
        json={"name": "d", "capabilities": ["deploy"]},
        headers=headers,
    )
    assert grant.status_code == 403
    events = client.get("/v1/admin/audit", headers=headers).json()["data"]
    assert events and all(e["organisation_id"] == acme.organisation_id for e in events)


def test_usage_report_endpoint(client: TestClient, tenancy: Tenancy) -> None:
    admin = _bearer(tenancy.bootstrap_admin_key() or "")
    tenant = make_tenant(tenancy, "a")
    for prompt in (4, 6):
        body = {"model": "m", "prompt_tokens": prompt, "completion_tokens": 1}
        client.post("/v1/generate", json=body, headers=tenant.headers)
    report = client.get(
        "/v1/admin/usage",
        params={"group_by": ["workspace", "model"], "workspace_id": tenant.workspace_id},
        headers=admin,
    ).json()
    assert [(r["workspace"], r["model"], r["requests"], r["total_tokens"]) for r in report["data"]] == [
        (tenant.workspace_id, "m", 2, 12)
    ]
    assert client.get("/v1/admin/usage", params={"group_by": "colour"}, headers=admin).status_code == 400


def test_out_of_range_numbers_are_422_not_500(client: TestClient, tenancy: Tenancy) -> None:
    admin = _bearer(tenancy.bootstrap_admin_key() or "")
    widest = {"requests_per_minute": 2**31 - 1, "monthly_token_budget": 2**63 - 1}
    created = client.post("/v1/admin/workspaces", json={"name": "wide", "limits": widest}, headers=admin)
    assert created.status_code == 201 and created.json()["limits"]["monthly_token_budget"] == 2**63 - 1
    too_wide = {"name": "too wide", "limits": {"requests_per_minute": 2**31}}
    assert client.post("/v1/admin/workspaces", json=too_wide, headers=admin).status_code == 422
    key = {"name": "k", "capabilities": ["inference"], "expires_in_s": 10**16}
    assert client.post(f"/v1/admin/workspaces/{created.json()['id']}/keys", json=key, headers=admin).status_code == 422


def test_scheduling_weight_is_set_by_platform_admins_and_reaches_the_engine(
    client: TestClient, tenancy: Tenancy
) -> None:
    admin = _bearer(tenancy.bootstrap_admin_key() or "")
    acme = make_tenant(tenancy, "acme", capabilities=frozenset({Capability.ADMIN, Capability.INFERENCE}))
    path = f"/v1/admin/workspaces/{acme.workspace_id}"
    assert client.get(path, headers=admin).json()["scheduling_weight"] is None
    principal = tenancy.authenticate(f"Bearer {acme.key}")
    assert tenancy.scheduling_weight(principal) == 1.0

    # An organisation's own admin may not take engine time from other organisations.
    refused = client.patch(path, json={"scheduling_weight": 8}, headers=_bearer(acme.key))
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "scheduling_weight"
    for bad in (0, -1, 1001, "heavy"):
        assert client.patch(path, json={"scheduling_weight": bad}, headers=admin).status_code in (400, 422)

    assert client.patch(path, json={"scheduling_weight": 4}, headers=admin).json()["scheduling_weight"] == 4
    principal = tenancy.authenticate(f"Bearer {acme.key}")
    assert principal.scheduling_weight == 4 and tenancy.scheduling_weight(principal) == 4.0
    # Null gives the workspace back to the operator's default.
    assert client.patch(path, json={"scheduling_weight": None}, headers=admin).json()["scheduling_weight"] is None
    assert tenancy.scheduling_weight(tenancy.authenticate(f"Bearer {acme.key}")) == 1.0
    actions = [e["action"] for e in client.get("/v1/admin/audit", headers=admin).json()["data"]]
    assert actions.count("workspace.scheduling_weight") == 2
