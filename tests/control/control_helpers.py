"""Helpers for the control-plane tests: specs of the test replica, and an
environment of store, tenancy, control plane and a client of its app."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from tramontane.control.backends import Backend
from tramontane.control.install import install
from tramontane.control.plane import ControlPlane
from tramontane.control.scheduler import NodeCapacity
from tramontane.store import Store
from tramontane.tenancy import Tenancy

APP = Path(__file__).parent / "replica_app.py"
REPLICA_COMMAND = f"{sys.executable} {APP}"


def spec(name: str, **overrides: Any) -> dict[str, Any]:
    """A command deployment of replica_app.py with fast health checks."""
    base: dict[str, Any] = {
        "name": name,
        "command": REPLICA_COMMAND,
        "resources": {"cpu": 0.5, "memory_mb": 64},
        "health_check": {"type": "tcp", "grace_period_s": 10, "interval_s": 0.2, "failures_before_restart": 2},
        "scaling": {"min_replicas": 1, "max_replicas": 1, "downscale_delay_s": 0},
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return base


@dataclass
class Env:
    store: Store
    tenancy: Tenancy
    plane: ControlPlane
    client: httpx.AsyncClient
    workspace_id: str
    home: Path

    async def restart_plane(self, capacity: NodeCapacity | None = None) -> None:
        """Stops the control plane and starts a new one on the same database."""
        await self.plane.stop()
        self.plane = new_plane(self.store, self.home, capacity, self.plane.backend)
        await self.plane.start()
        self.client = app_client(self.tenancy, self.plane, self.client.headers["authorization"])


def new_plane(
    store: Store, home: Path, capacity: NodeCapacity | None = None, backend: Backend | None = None
) -> ControlPlane:
    return ControlPlane(
        store,
        backend=backend,
        capacity=capacity or NodeCapacity(cpu=4, memory_mb=4096),
        home=home,
        reconcile_interval_s=0.1,
    )


def app_client(tenancy: Tenancy, plane: ControlPlane, authorization: str) -> httpx.AsyncClient:
    app = FastAPI()
    tenancy.install(app)
    install(app, plane, tenancy)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app),
        base_url="http://control",
        headers={"authorization": authorization},
        timeout=30,
    )
