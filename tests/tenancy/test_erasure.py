"""Erasure: after DELETE, nothing of the workspace remains, in rows or in files."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tenancy_helpers import add_key, make_tenant

from tramontane.errors import Invalid, NotFound, Unauthorized
from tramontane.platform.schema import metadata
from tramontane.store import AuditEvent, Store
from tramontane.store.types import utcnow
from tramontane.tenancy import CLI, RequestLogEntry, Tenancy

ALL_TABLES = metadata()  # the store's tables and every feature's


def _everything(store: Store) -> bytes:
    """What the database holds: its files on SQLite, every row as text on PostgreSQL."""
    path = store.sqlite_path
    if path is not None:
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    with store.read() as connection:
        rows = (repr(tuple(row)) for table in ALL_TABLES.sorted_tables for row in connection.execute(table.select()))
        return "\n".join(rows).encode()


def test_erasing_a_workspace_leaves_no_trace(client: TestClient, tenancy: Tenancy) -> None:
    admin = {"Authorization": f"Bearer {tenancy.bootstrap_admin_key()}"}
    doomed = make_tenant(tenancy, "doomed-7f3a")
    doomed2 = add_key(tenancy, doomed)
    kept = make_tenant(tenancy, "kept-91c2")
    for tenant, model in ((doomed, "model-doomed-c0ffee"), (doomed2, "model-doomed-c0ffee"), (kept, "model-kept-beef")):
        body = {"model": model, "prompt_tokens": 1, "completion_tokens": 1}
        assert client.post("/v1/generate", json=body, headers=tenant.headers).status_code == 200
    client.post("/v1/generate", json={}, headers={"Authorization": f"Bearer {doomed.key[:-3]}xyz"})  # audited failure
    client.post("/v1/deploy", headers=doomed.headers)  # audited denial
    for tenant, secret in ((doomed, "doomed-prompt-5e1f"), (kept, "kept-prompt-77aa")):
        now = utcnow()
        tenancy.request_logs.submit(
            RequestLogEntry(
                workspace_id=tenant.workspace_id,
                api_key_id=tenant.key_id,
                request_id=f"req-{secret}",
                endpoint="/v1/chat/completions",
                model="m",
                created_at=now,
                completed_at=now,
                retention_days=30,
                request={"messages": [{"role": "user", "content": secret}]},
                response={"choices": [{"message": {"content": f"reply to {secret}"}}]},
            )
        )
    tenancy.request_logs.flush()
    files = tenancy.workspace_dir(doomed.workspace_id)
    (files / "adapters").mkdir(parents=True)
    (files / "adapters" / "weights.bin").write_bytes(b"secret weights of doomed")

    response = client.delete(f"/v1/admin/workspaces/{doomed.workspace_id}", headers=admin)
    assert response.json() == {"id": doomed.workspace_id, "object": "workspace", "deleted": True}

    assert not files.exists() and list(files.parent.iterdir()) == []
    stored = _everything(tenancy.store)
    traces = [
        doomed.workspace_id,
        "ws-doomed-7f3a",
        "model-doomed-c0ffee",
        doomed.key_id,
        doomed2.key_id,
        "doomed-prompt-5e1f",
    ]
    for trace in traces:
        assert trace.encode() not in stored, trace
    assert doomed.key.encode() not in stored
    # The same search does find what was kept, so it would have found the rest.
    for trace in (kept.workspace_id, "ws-kept-91c2", "model-kept-beef", kept.key_id, "kept-prompt-77aa"):
        assert trace.encode() in stored, trace
    with tenancy.store.read() as connection:
        for table in ALL_TABLES.sorted_tables:
            if "workspace_id" in table.c:
                query = table.select().where(table.c.workspace_id == doomed.workspace_id)
                assert connection.execute(query).first() is None, table.name
    with tenancy.store.session() as session:
        erased = session.scalars(select(AuditEvent).where(AuditEvent.action == "workspace.erase")).one()
    assert erased.target == "sha256:" + hashlib.sha256(doomed.workspace_id.encode()).hexdigest()


def test_erased_keys_stop_working_and_erasing_twice_is_404(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a")
    tenancy.erase_workspace(tenant.workspace_id, CLI)
    with pytest.raises(Unauthorized):
        tenancy.authenticate(f"Bearer {tenant.key}")
    with pytest.raises(NotFound):
        tenancy.erase_workspace(tenant.workspace_id, CLI)
    with pytest.raises(Invalid):
        tenancy.erase_workspace("../../etc", CLI)


def test_erasing_an_organisation(client: TestClient, tenancy: Tenancy) -> None:
    admin = {"Authorization": f"Bearer {tenancy.bootstrap_admin_key()}"}
    first = make_tenant(tenancy, "a")
    second = make_tenant(tenancy, "b", organisation_id=first.organisation_id)
    tenancy.workspace_dir(second.workspace_id).mkdir(parents=True)
    assert client.delete(f"/v1/admin/organisations/{first.organisation_id}", headers=admin).status_code == 200
    assert client.get(f"/v1/admin/workspaces/{second.workspace_id}", headers=admin).status_code == 404
    assert not tenancy.workspace_dir(second.workspace_id).exists()
    assert first.organisation_id.encode() not in _everything(tenancy.store)
