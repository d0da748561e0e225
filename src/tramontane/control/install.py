"""Wiring the control plane into a server app."""

from __future__ import annotations

from fastapi import FastAPI

from ..tenancy import Tenancy
from .api import router
from .domains import DomainRouting
from .domains_api import router as domains_router
from .plane import ControlPlane
from .router import create_router_app
from .secrets_api import router as secrets_router

SERVE_PREFIX = "/serve"


def install(app: FastAPI, plane: ControlPlane, tenancy: Tenancy, *, serve_prefix: str = SERVE_PREFIX) -> None:
    """Adds `/v1/deployments`, `/v1/secrets` and mounts the deployments router at
    `serve_prefix` and in front of the app for custom domains. The caller still
    runs `await plane.start()` and `await plane.stop()` in its lifespan, and
    installs `tenancy` on `app`."""
    app.state.control_plane = plane
    app.include_router(router)
    app.include_router(domains_router)
    app.include_router(secrets_router)
    proxy = create_router_app(plane, tenancy)
    app.mount(serve_prefix, proxy)
    app.add_middleware(DomainRouting, domains=plane.domains, router=proxy)
