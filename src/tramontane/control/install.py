"""Wiring the control plane into a server app."""

from __future__ import annotations

from fastapi import FastAPI

from ..tenancy import Tenancy
from .api import router
from .plane import ControlPlane
from .router import create_router_app

SERVE_PREFIX = "/serve"


def install(app: FastAPI, plane: ControlPlane, tenancy: Tenancy, *, serve_prefix: str = SERVE_PREFIX) -> None:
    """Adds `/v1/deployments` and mounts the deployments router at `serve_prefix`.
    The caller still runs `await plane.start()` and `await plane.stop()` in its
    lifespan, and installs `tenancy` on `app`."""
    app.state.control_plane = plane
    app.include_router(router)
    app.mount(serve_prefix, create_router_app(plane, tenancy))
