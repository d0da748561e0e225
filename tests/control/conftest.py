"""Fixtures: a control plane on a fresh SQLite store, its API and router in one
app, and a tenant whose key may deploy and call deployments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from control_helpers import Env, app_client, new_plane

from tramontane.control.backends import Backend
from tramontane.control.scheduler import NodeCapacity
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy


@pytest.fixture
def capacity() -> NodeCapacity:
    return NodeCapacity(cpu=4, memory_mb=4096)


@pytest.fixture
def backend() -> Backend | None:
    """Where replicas run; None: the control plane's default, local processes."""
    return None


@pytest.fixture
async def env(tmp_path: Path, capacity: NodeCapacity, backend: Backend | None) -> AsyncIterator[Env]:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tenancy = Tenancy(store, home=tmp_path)
    workspace_id, key = tenancy.create_tenant("control", frozenset({Capability.DEPLOY, Capability.INFERENCE}))
    plane = new_plane(store, tmp_path, capacity, backend)
    await plane.start()
    env = Env(store, tenancy, plane, app_client(tenancy, plane, f"Bearer {key}"), workspace_id, tmp_path)
    try:
        yield env
    finally:
        await env.client.aclose()
        await env.plane.stop()
        store.close()
