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
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Invalid, Unauthorized
from .api import create_router
from .errors import NotFound
from .hosts import DEFAULT_HEARTBEAT_S, HostDirectory, HostInfo, HostReplaced
from .manager import SandboxManager

log = logging.getLogger("tramontane.sandbox.node")

NODE_PREFIX = "/_node"
WORKSPACE_HEADER = "x-tramontane-workspace"
# A gateway records a placement right after the host made the sandbox; one made
# through the node API and still unrecorded this long after is an orphan.
RECORD_WITHIN_S = 10.0


def host_token(pepper: bytes) -> str:
    """The token gateways present to hosts: every process that shares the key
    pepper derives the same one, and a tenant's key is never it."""
    return hmac.new(pepper, b"tramontane sandbox hosts", hashlib.sha256).hexdigest()


def node_api(manager: SandboxManager, token: str, on_created: Callable[[str], None] | None = None) -> FastAPI:
    """The node API, to mount at `NODE_PREFIX`. It has no lifespan: whoever mounts
    it starts and stops `manager`. `on_created` hears of each sandbox made through it."""
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
    if on_created is not None:
        app.add_middleware(_CreationWatch, on_created=on_created)
    return app


class _CreationWatch:
    """Tells `on_created` the id of each sandbox a `POST /v1/sandboxes` made."""

    def __init__(self, app: ASGIApp, on_created: Callable[[str], None]):
        self.app = app
        self.on_created = on_created

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        creating = scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/v1/sandboxes")
        if not creating:
            await self.app(scope, receive, send)
            return
        status, body = 0, []

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 201:
                body.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, watching)
        if status == 201:
            self.on_created(json.loads(b"".join(body))["sandbox_id"])


@dataclass(frozen=True)
class HostSettings:
    name: str
    address: str  # where gateways reach this host's node API (without NODE_PREFIX)
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    # A dedicated host (`tramontane node`) holds nothing but what gateways
    # placed on it, so the paused sandboxes it finds on disk when it starts are
    # judged like newly made ones: one no longer placed (its workspace erased
    # while the host was down) is killed, its snapshot with it. A gateway that
    # also hosts keeps its conversations' sandboxes, which are never placed.
    dedicated: bool = False


class HostAgent:
    """Registers a started manager as a host and keeps its heartbeat; kills the
    sandboxes that are no longer placed on it (see `_placed`)."""

    def __init__(self, manager: SandboxManager, directory: HostDirectory, settings: HostSettings):
        self.manager = manager
        self.directory = directory
        self.settings = settings
        self.incarnation = secrets.token_hex(8)
        self._beating: asyncio.Task[None] | None = None
        # The sandboxes a heartbeat found placed here, and those made through
        # the node API (by when): one of them held still but not placed (lost,
        # its workspace erased, or its gateway died before recording it) is
        # killed, a created one once its gateway had time to record it. Others
        # (a conversation's, on a gateway that hosts) are not this agent's to judge.
        self._placed: set[str] = set()
        self._created: dict[str, float] = {}

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
        held = self._held()
        if self.settings.dedicated:
            for sandbox_id in held:
                self.created(sandbox_id)
        await asyncio.to_thread(self.directory.register, self.info(), self.incarnation, held)
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

    def created(self, sandbox_id: str) -> None:
        """A sandbox made through the node API (see `node_api`'s `on_created`)."""
        self._created[sandbox_id] = time.monotonic()

    def _held(self) -> set[str]:
        return {sandbox.id for sandbox in self.manager.list()}

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            held = self._held()
            try:
                beat = await asyncio.to_thread(
                    self.directory.heartbeat, self.settings.name, self.incarnation, held, self.manager.committed_mb()
                )
            except HostReplaced as exc:
                log.error("%s: this host stops heartbeating", exc)
                return
            except Exception as exc:  # noqa: BLE001  (the loop must outlive any one failure)
                # Retried at the next beat; past the hosts' TTL the gateways declare
                # this host's sandboxes lost, and it kills them once it is back.
                log.warning("sandbox host %s: heartbeat failed: %r", self.settings.name, exc)
                continue
            settled = time.monotonic() - RECORD_WITHIN_S
            judged = self._placed | {i for i, at in self._created.items() if at < settled}
            doomed = beat.lost | (judged & held) - beat.placed
            self._placed = beat.placed
            self._created = {i: at for i, at in self._created.items() if i in held and i not in beat.placed | doomed}
            for sandbox_id in doomed:
                log.warning("sandbox %s is no longer placed on this host (lost, or its workspace erased): "
                            "killing it", sandbox_id)  # fmt: skip
                try:
                    await self.manager.kill(sandbox_id)
                except NotFound:
                    pass
