"""The store: URL resolution, SQLite settings, and migrations that match the models."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import bindparam, inspect, select
from tenancy_helpers import make_tenant

from tramontane.platform.schema import metadata
from tramontane.store import ApiKey, Store, Workspace, current_revision, database_url, open_store, upgrade
from tramontane.store.types import utcnow
from tramontane.tenancy import Tenancy

ALL_TABLES = metadata()  # the store's tables and every feature's


def test_migrations_match_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, ALL_TABLES) == []
    assert set(inspect(store.engine).get_table_names()) == set(ALL_TABLES.tables) | {"alembic_version"}


def test_upgrade_is_idempotent(store: Store) -> None:
    head = current_revision(store)
    upgrade(store)
    assert current_revision(store) == head == "0019_sandbox_hosts"


def test_a_prepared_read_returns_what_a_connection_does(tenancy: Tenancy, store: Store) -> None:
    tenant = make_tenant(tenancy, "a", expires_at=utcnow() + timedelta(hours=1))
    statement = (
        select(ApiKey.id, ApiKey.expires_at, ApiKey.revoked_at, Workspace.name.label("workspace_name"))
        .join(Workspace, Workspace.id == ApiKey.workspace_id)
        .where(ApiKey.id == bindparam("key_id"), ApiKey.created_at <= bindparam("before"))
    )
    prepared = store.prepare(statement)
    values = {"key_id": tenant.key_id, "before": utcnow()}
    with store.read() as connection:
        expected = connection.execute(statement, values).one()
    row = prepared.first(**values)
    # Same values, types included: timezone-aware datetimes on both backends.
    assert tuple(row) == tuple(expected) and row.expires_at.tzinfo is not None
    assert row.workspace_name == expected.workspace_name and row.revoked_at is None
    assert prepared.first(key_id=tenant.key_id, before=utcnow() - timedelta(days=1)) is None
    assert prepared.first(key_id="no-such-key", before=utcnow()) is None


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with store.read() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    store.close()


def test_database_url_defaults_to_sqlite_in_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRAMONTANE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path))
    assert database_url() == f"sqlite:///{tmp_path / 'tramontane.db'}"
    monkeypatch.setenv("TRAMONTANE_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert database_url() == "postgresql+psycopg://u@h/db"
    assert database_url("sqlite:///~/x.db") == f"sqlite:///{Path.home() / 'x.db'}"


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="file"):
        Store("sqlite://")
