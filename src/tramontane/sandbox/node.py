"""A sandbox host: this machine's `SandboxManager` behind the internal node API,
registered in the shared database with a heartbeat (see `hosts`).

The node API is the public sandbox API (`create_router`) under `NODE_PREFIX`,
for gateways only: a request must carry the hosts' token (derived from the key
pepper every gateway and node shares, never a tenant's key) and the workspace
the gateway has already authenticated, in `WORKSPACE_HEADER`. A gateway checks
the caller's key, capability, limits and ownership of the sandbox; the node
trusts that and scopes every call to the named workspace as the public API does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import HTTPConnection

from ..errors import Invalid, Unauthorized
from .api import create_router
from .errors import NotFound
from .hosts import DEFAULT_HEARTBEAT_S, HostDirectory, HostInfo, HostReplaced
from .manager import SandboxManager

log = logging.getLogger("tramontane.sandbox.node")

NODE_PREFIX = "/_node"
WORKSPACE_HEADER = "x-tramontane-workspace"


def host_token(pepper: bytes) -> str:
    """The token gateways present to hosts: every process that shares the key
    pepper derives the same one, and a tenant's key is never it."""
    return hmac.new(pepper, b"tramontane sandbox hosts", hashlib.sha256).hexdigest()


def node_api(manager: SandboxManager, token: str) -> FastAPI:
    """The node API, to mount at `NODE_PREFIX`. It has no lifespan: whoever mounts
    it starts and stops `manager`."""
    expected = f"Bearer {token}".encode()

    def gateway_workspace(request: HTTPConnection) -> str:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized("This is a sandbox host's internal API, for gateways only", code="invalid_host_token")
        workspace = request.headers.get(WORKSPACE_HEADER)
        if not workspace:
            raise Invalid(f"{WORKSPACE_HEADER} is required", code="missing_workspace")
        return workspace

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(create_router(manager, owner=gateway_workspace))
    return app


@dataclass(frozen=True)
class HostSettings:
    name: str
    address: str  # where gateways reach this host's node API (without NODE_PREFIX)
    heartbeat_s: float = DEFAULT_HEARTBEAT_S


class HostAgent:
    """Registers a started manager as a host and keeps its heartbeat; kills the
    sandboxes the gateways declared lost while it could not heartbeat."""

    def __init__(self, manager: SandboxManager, directory: HostDirectory, settings: HostSettings):
        self.manager = manager
        self.directory = directory
        self.settings = settings
        self.incarnation = secrets.token_hex(8)
        self._beating: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    def info(self) -> HostInfo:
        stats = self.manager.stats()
        return HostInfo(
            name=self.settings.name,
            address=self.settings.address,
            cpu=float(os.cpu_count() or 1),
            memory_mb=stats["memory_capacity_mb"],
            max_sandboxes=stats["capacity"],
            tiers=self.manager.tiers(),
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.directory.register, self.info(), self.incarnation, self._held())
        self._beating = asyncio.create_task(self._beat())
        log.info("sandbox host %s registered at %s", self.settings.name, self.settings.address)

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
        try:
            await asyncio.to_thread(self.directory.leave, self.settings.name, self.incarnation)
        except SQLAlchemyError as exc:  # the gateways will find its heartbeat lapsed instead
            log.warning("sandbox host %s could not deregister: %s", self.settings.name, exc)

    def _held(self) -> set[str]:
        return {sandbox.id for sandbox in self.manager.list()}

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                lost = await asyncio.to_thread(
                    self.directory.heartbeat,
                    self.settings.name,
                    self.incarnation,
                    self._held(),
                    self.manager.committed_mb(),
                )
            except HostReplaced as exc:
                log.error("%s: this host stops heartbeating", exc)
                return
            except SQLAlchemyError as exc:
                # Retried at the next beat; past the hosts' TTL the gateways declare
                # this host's sandboxes lost, and it kills them once it is back.
                log.warning("sandbox host %s: heartbeat failed: %s", self.settings.name, exc)
                continue
            for sandbox_id in lost:
                log.warning("sandbox %s was declared lost while this host was away: killing it", sandbox_id)
                try:
                    await self.manager.kill(sandbox_id)
                except NotFound:
                    pass
