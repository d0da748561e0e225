"""The request log writer and store: expiry, purge, dropped entries, retention changes, CLI."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tenancy_helpers import Tenant, make_tenant
from typer.testing import CliRunner

from tramontane.store import RequestLog, Workspace
from tramontane.store.types import utcnow
from tramontane.tenancy import CLI, RequestLogEntry, RequestLogWriter, Tenancy, directory
from tramontane.tenancy.cli import app
from tramontane.tenancy.request_logs import find_log, list_logs


def entry(tenant: Tenant, request_id: str, *, age_days: float = 0, retention_days: int = 7) -> RequestLogEntry:
    created = utcnow() - timedelta(days=age_days)
    return RequestLogEntry(
        workspace_id=tenant.workspace_id,
        api_key_id=tenant.key_id,
        request_id=request_id,
        endpoint="/v1/chat/completions",
        model="m",
        created_at=created,
        completed_at=created,
        retention_days=retention_days,
        request={"messages": [{"role": "user", "content": request_id}]},
        response={"choices": []},
    )


def rows(tenancy: Tenancy) -> int:
    with tenancy.store.read() as connection:
        return connection.execute(select(func.count()).select_from(RequestLog)).scalar_one()


def test_expired_logs_are_never_read_and_purged_in_batches(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a")
    writer = RequestLogWriter(tenancy.store, purge_batch_size=2, purge_interval_s=3600)
    for i in range(5):
        assert writer.submit(entry(tenant, f"old-{i}", age_days=2, retention_days=1))
    assert writer.submit(entry(tenant, "fresh"))
    writer.flush()
    assert rows(tenancy) == 6
    # Until the purge runs, reads already skip the expired ones.
    assert [log.request_id for log in list_logs(tenancy.store, tenant.workspace_id, before_id=None, limit=10)] == [
        "fresh"
    ]
    assert find_log(tenancy.store, tenant.workspace_id, "old-0") is None
    assert writer.purge_expired() == 5
    assert rows(tenancy) == 1 and writer.purge_expired() == 0
    writer.close()


def test_a_full_queue_or_failed_write_drops_entries_and_counts_them(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a")
    writer = RequestLogWriter(tenancy.store, capacity=2, purge_interval_s=3600)
    refused = 0
    with tenancy.store.write() as connection:  # the database is busy: the writer waits for it
        if not tenancy.store.is_sqlite:  # where a transaction alone blocks no insert
            connection.exec_driver_sql("LOCK TABLE request_logs IN EXCLUSIVE MODE")
        for i in range(6):
            refused += not writer.submit(entry(tenant, f"r{i}"))
    writer.flush()
    assert refused >= 3 and writer.dropped == refused
    assert rows(tenancy) == 6 - refused
    # A workspace erased while its entry waited: that one is dropped, the others stored.
    writer.submit(replace(entry(tenant, "x"), workspace_id="ws_0000000000000000"))
    writer.submit(entry(tenant, "kept"))
    writer.close()
    assert writer.dropped == refused + 1
    assert find_log(tenancy.store, tenant.workspace_id, "kept") is not None


def test_shortening_retention_shortens_stored_logs(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a")
    tenancy.request_logs.submit(entry(tenant, "long", retention_days=365))
    tenancy.request_logs.flush()
    with tenancy.store.session() as session:
        workspace = session.get(Workspace, tenant.workspace_id)
        assert workspace is not None
        directory.set_request_log_retention(session, workspace, 2, CLI)
    log = find_log(tenancy.store, tenant.workspace_id, "long")
    assert log is not None and log.expires_at <= utcnow() + timedelta(days=2)
    assert tenancy.authenticate(f"Bearer {tenant.key}").request_log_retention_days == 2


def test_cli_turns_request_logs_on_and_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path))
    monkeypatch.setenv("TRAMONTANE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("COLUMNS", "200")
    tenancy = Tenancy.open()
    tenancy.bootstrap_admin_key()
    runner = CliRunner()

    def retention(workspace: str) -> int | None:
        with tenancy.store.session() as session:
            row = session.get(Workspace, workspace)
            assert row is not None
            return row.request_log_retention_days

    created = runner.invoke(app, ["workspaces", "create", "team", "--request-log-days", "30"])
    workspace = created.output.strip()
    assert retention(workspace) == 30 and "30 days" in runner.invoke(app, ["workspaces", "list"]).output
    assert runner.invoke(app, ["workspaces", "request-logs", workspace, "--off"]).exit_code == 0
    assert retention(workspace) is None
    assert runner.invoke(app, ["workspaces", "request-logs", workspace, "--retention-days", "7"]).exit_code == 0
    assert retention(workspace) == 7
    assert runner.invoke(app, ["workspaces", "request-logs", workspace, "--retention-days", "0"]).exit_code != 0
    assert runner.invoke(app, ["workspaces", "request-logs", workspace]).exit_code == 1  # neither given
    tenancy.close()
