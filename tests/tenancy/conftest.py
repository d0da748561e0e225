"""Fixtures: stores on SQLite and on PostgreSQL (the throwaway server of
postgres_fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tenancy_helpers import build_app

from tramontane.store import Store, open_store
from tramontane.tenancy import Tenancy


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tramontane.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = open_store(database_url)
    yield store
    store.close()


@pytest.fixture
def tenancy(store: Store, tmp_path: Path) -> Iterator[Tenancy]:
    tenancy = Tenancy(store, home=tmp_path / "home", pepper=b"test-pepper-0123456789abcdef")
    yield tenancy
    tenancy.usage_writer.close()  # the store is the `store` fixture's to close
    tenancy.request_logs.close()


@pytest.fixture
def client(tenancy: Tenancy) -> Iterator[TestClient]:
    with TestClient(build_app(tenancy)) as client:
        yield client
