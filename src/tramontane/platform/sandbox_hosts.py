"""Sandboxes across hosts, at a gateway: placement, routing and lost sandboxes.

With gateways sharing a PostgreSQL database, sandboxes run on hosts that
registered themselves (`sandbox.hosts`, `sandbox.node`): `tramontane node`
agents, and gateways that host sandboxes too. `SandboxForwarding` sits in front
of the sandbox API and, for each request:

- `POST /v1/sandboxes`: checks the caller's key, then creates the sandbox on the
  least loaded live host that runs the template's tier and has room (the next
  one if that host answers 503), and records the placement. No host with room:
  503 `no_sandbox_host` with Retry-After.
- `GET /v1/sandboxes`: the caller's sandboxes on every live host, and its lost
  ones (`"state": "lost"`).
- `/v1/sandboxes/{id}/...`: a sandbox placed on another host is reached there
  (after the key check here, and the placement's workspace must be the
  caller's: else 404, as for an absent one); one on this gateway's own host is
  served here. A lost sandbox answers 409 `sandbox_lost` to every call but
  `GET /v1/sandboxes/{id}` (its state, "lost") and `DELETE` (forgets it).

Every HTTP call is relayed, streams (NDJSON, server-sent events) as they come;
WebSockets (terminals, ports) are relayed frame by frame. Tenancy stays here: the
host sees the gateway's token and the workspace, never the caller's key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import anyio
import httpx
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..control.forwarding import read_body, relay
from ..errors import Conflict, Forbidden, NotFound, TramontaneError, Unavailable, as_api_error
from ..sandbox.hosts import HostDirectory, HostView, Placement, PlacementState, rank
from ..sandbox.manager import MICROVM_TEMPLATE, TIER1_TEMPLATE, is_microvm
from ..sandbox.node import NODE_PREFIX, WORKSPACE_HEADER, HostAgent
from ..tenancy import Capability, Principal, require
from .sandbox_owner import sandbox_owner
from .sandbox_ws import relay_websocket

log = logging.getLogger(__name__)

COLLECTION = "/v1/sandboxes"
_SANDBOX_PATH = re.compile(r"^/v1/sandboxes/([0-9a-f]{8,64})(/.*)?$")
_PORT_REST = re.compile(r"^/ports/(\d{1,5})(/.*)?$")
# Headers not sent on to a host: the connection's own, and the caller's
# credentials (the host gets the gateway's token and the workspace instead).
_NOT_FORWARDED = frozenset(
    {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"content-length",
     b"proxy-authorization", b"expect", b"authorization", b"cookie", WORKSPACE_HEADER.encode()}
)  # fmt: skip
_NOT_RELAYED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade"})
# Hosts tried for one creation before the caller gets a 503.
_TRIES = 3


class LostSandboxModel(BaseModel):
    sandbox_id: str
    template: str
    state: Literal["lost"] = "lost"
    metadata: dict[str, str] = {}
    started_at: datetime
    lost_at: datetime | None
    reason: str | None
    host: str


class SandboxHostModel(BaseModel):
    name: str
    address: str
    live: bool = Field(description="Heartbeat within the hosts' TTL; a host not live has its sandboxes lost.")
    tiers: list[str]
    cpu: float
    memory_mb: int
    max_sandboxes: int
    placed: int = Field(description="Running sandboxes placed on it.")
    placed_memory_mb: int
    committed_memory_mb: int = Field(description="By its last heartbeat, its warm pool included.")
    heartbeat_age_s: float


class SandboxHostList(BaseModel):
    data: list[SandboxHostModel]


def hosts_router(directory: HostDirectory) -> APIRouter:
    """`GET /v1/admin/sandbox-hosts`: the registered hosts, for platform admins."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get("/sandbox-hosts", response_model=SandboxHostList)
    async def list_sandbox_hosts(
        principal: Annotated[Principal, Depends(require(Capability.ADMIN))],
    ) -> SandboxHostList:
        if not principal.platform_admin:  # the platform's machines are no organisation's business
            raise Forbidden("Only a platform admin key can do this", code="platform_admin_required")
        statuses = await asyncio.to_thread(directory.statuses)
        return SandboxHostList(data=[SandboxHostModel(**{**vars(s), "tiers": list(s.tiers)}) for s in statuses])

    return router


class HostLost(Exception):
    """A host died while its response was being relayed: the client's connection
    is dropped, so that a cut stream never looks complete."""


class SandboxHosts:
    """A gateway's side of the hosts: the directory, the hosts' token, the
    connections to them, and this gateway's own host (None: it hosts none)."""

    def __init__(self, directory: HostDirectory, token: str, agent: HostAgent | None, *, sweep_s: float = 1.0):
        self.directory = directory
        self.token = token
        self.agent = agent
        self.sweep_s = sweep_s
        self.client = httpx.AsyncClient(
            # Commands run as long as their own timeout; the host enforces it.
            timeout=httpx.Timeout(None, connect=2.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._sweeping: asyncio.Task[None] | None = None
        # The live hosts' names as of the last sweep: relayed calls in flight
        # watch their host here, rather than each reading the database.
        self.live: set[str] | None = None

    async def start(self) -> None:
        self._sweeping = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
        await self.client.aclose()

    def is_local(self, placement: Placement) -> bool:
        return self.agent is not None and placement.host == self.agent.name and not placement.lost

    async def _sweep(self) -> None:
        """Marks lost the sandboxes of hosts whose heartbeat lapsed. Every gateway
        runs it; it is one idempotent UPDATE."""
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                lost = await asyncio.to_thread(self.directory.sweep)
            except SQLAlchemyError as exc:
                log.warning("sandbox hosts: sweep failed: %s", exc)
                continue
            if lost:
                log.warning("%d sandbox(es) lost: their host stopped heartbeating", lost)
            try:
                self.live = {host.name for host in await asyncio.to_thread(self.directory.live_hosts)}
            except SQLAlchemyError as exc:
                log.warning("sandbox hosts: reading the live hosts failed: %s", exc)

    def lapsed(self, host: str) -> bool:
        """Whether the last sweep found `host` down (False before any sweep)."""
        return self.live is not None and host not in self.live


class SandboxForwarding:
    def __init__(self, app: ASGIApp, hosts: SandboxHosts):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["type"] == "http" and path.rstrip("/") == COLLECTION and scope["method"] in ("GET", "POST"):
            handle = self._create if scope["method"] == "POST" else self._list
            await _answering_errors(handle, scope, receive, send)
            return
        match = _SANDBOX_PATH.match(path)
        rest = (match.group(2) or "") if match else ""
        if match is None or rest.startswith("/port-links/"):  # links are signed here, for any host's sandbox
            await self.app(scope, receive, send)
            return
        placement = await asyncio.to_thread(self.hosts.directory.lookup, match.group(1))
        if placement is None or self.hosts.is_local(placement):
            await self.app(scope, receive, send)
            return

        async def remote(scope: Scope, receive: Receive, send: Send) -> None:
            await self._remote(scope, receive, send, placement, rest)

        await _answering_errors(remote, scope, receive, send)

    # -- one sandbox

    async def _remote(self, scope: Scope, receive: Receive, send: Send, placement: Placement, rest: str) -> None:
        async with _workspace(scope, receive, placement.sandbox_id, rest) as workspace:
            if placement.workspace_id != workspace or placement.state is PlacementState.ENDED:
                raise NotFound(f"sandbox {placement.sandbox_id!r} does not exist or was stopped",
                               code="sandbox_not_found")  # fmt: skip
            if placement.lost:
                await self._answer_lost(scope, send, placement, rest)
                return
            assert placement.address is not None
            if scope["type"] == "websocket":
                url, headers = self._url(placement.address, scope), self._headers(scope, workspace)
                await relay_websocket(scope, receive, send, url, headers)
                return
            body = await read_body(receive)
            answered = False

            async def tracking(message: Message) -> None:
                nonlocal answered
                answered = answered or message["type"] == "http.response.start"
                await send(message)

            async with self._watching(placement.host) as lapsed:
                response = await self._send(placement.address, scope, workspace, body)
                if scope["method"] == "DELETE" and rest in ("", "/") and response.status_code in (204, 404):
                    await asyncio.to_thread(self.hosts.directory.end, placement.sandbox_id, "killed")
                await _relay(response, tracking)
            if lapsed.is_set():
                if answered:
                    raise HostLost(f"host {placement.host} stopped heartbeating mid-response")
                raise Conflict(
                    f"sandbox {placement.sandbox_id} is lost: its host {placement.host} stopped heartbeating "
                    "while this call ran. Its processes and files are gone; delete it and create another.",
                    code="sandbox_lost",
                )

    @asynccontextmanager
    async def _watching(self, host: str) -> AsyncIterator[asyncio.Event]:
        """Cancels the block when `host`'s heartbeat lapses (a frozen or cut-off
        host answers nothing, not even an error); the event says it did."""
        lapsed = asyncio.Event()
        async with anyio.create_task_group() as tasks:

            async def watch() -> None:
                while not self.hosts.lapsed(host):
                    await anyio.sleep(self.hosts.sweep_s)
                lapsed.set()
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            yield lapsed
            tasks.cancel_scope.cancel()

    async def _answer_lost(self, scope: Scope, send: Send, placement: Placement, rest: str) -> None:
        method = scope.get("method")
        if method == "DELETE" and rest in ("", "/"):
            await asyncio.to_thread(self.hosts.directory.end, placement.sandbox_id, "deleted")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if method == "GET" and rest in ("", "/"):
            await _send_json(send, 200, _lost_model(placement).model_dump(mode="json"))
            return
        when = f" at {_utc(placement.ended_at).isoformat()}" if placement.ended_at else ""
        raise Conflict(
            f"sandbox {placement.sandbox_id} is lost: {placement.reason or 'its host stopped heartbeating'} "
            f"(host {placement.host}{when}). Its processes and files are gone; delete it and create another.",
            code="sandbox_lost",
        )

    # -- the collection

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with _workspace(scope, receive) as workspace:
            body = await read_body(receive)
            template = _template_of(body)
            tier = MICROVM_TEMPLATE if is_microvm(template) else TIER1_TEMPLATE  # microvm:<template> too
            live = await asyncio.to_thread(self.hosts.directory.live_hosts)
            candidates = rank(live, tier)
            if live and not any(tier in host.tiers for host in live):  # waiting would not help
                offered = sorted({t for host in live for t in host.tiers})
                raise Unavailable(
                    f"No sandbox host runs {tier!r} sandboxes (the {len(live)} live host(s) run: "
                    f"{', '.join(offered) or 'none'})",
                    code="tier_unavailable",
                    param="template",
                )
            refusal: httpx.Response | None = None
            for host in candidates[:_TRIES]:
                try:
                    response = await self._send(host.address, scope, workspace, body)
                except Unavailable:
                    continue
                if response.status_code == 503:  # full since the directory was read: the next one
                    await response.aread()
                    refusal = response
                    continue
                if response.status_code != 201:
                    await _relay(response, send)
                    return
                await self._placed(host, workspace, template, await response.aread(), response, send)
                return
            if refusal is not None and not candidates[_TRIES:]:
                await _relay(refusal, send)
                return
            why = "no sandbox host is live" if not live else f"the {len(live)} live host(s) have no room for it"
            raise Unavailable(
                f"No room for a {template!r} sandbox now: {why}; retry shortly",
                code="no_sandbox_host",
                retry_after_s=2,
            )

    async def _placed(
        self, host: HostView, workspace: str, template: str, data: bytes, response: httpx.Response, send: Send
    ) -> None:
        made = json.loads(data)
        sandbox_id, memory_mb = made["sandbox_id"], made["memory_mb"]
        # Shielded: a caller that hangs up now must not leave a sandbox no gateway can find.
        with anyio.CancelScope(shield=True):
            try:
                await asyncio.to_thread(
                    self.hosts.directory.record, sandbox_id, workspace, host.name, template, memory_mb
                )
            except BaseException:
                await self._kill_unrecorded(host, sandbox_id, workspace)
                raise
        await send({"type": "http.response.start", "status": 201, "headers": _relayed_headers(response)})
        await send({"type": "http.response.body", "body": data})

    async def _kill_unrecorded(self, host: HostView, sandbox_id: str, workspace: str) -> None:
        try:
            await self.hosts.client.delete(
                f"{host.address.rstrip('/')}{NODE_PREFIX}{COLLECTION}/{sandbox_id}",
                headers=self._headers({"headers": []}, workspace),
            )
        except httpx.HTTPError as exc:
            log.error("sandbox %s on %s could not be recorded nor killed: %s", sandbox_id, host.name, exc)

    async def _list(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with _workspace(scope, receive) as workspace:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            state = query.get("state", [None])[0]
            found: list[dict[str, Any]] = []
            if state != "lost":
                hosts = await asyncio.to_thread(self.hosts.directory.live_hosts)
                answers = await asyncio.gather(
                    *(self._host_list(host, scope, workspace) for host in hosts), return_exceptions=True
                )
                for host, answer in zip(hosts, answers, strict=True):
                    if isinstance(answer, httpx.Response):  # the host refused the query: so would every host
                        await _relay(answer, send)
                        return
                    if isinstance(answer, BaseException):
                        log.warning("listing sandboxes: host %s did not answer: %s", host.name, answer)
                        continue
                    found.extend(answer)
            if state in (None, "lost") and "metadata" not in query:
                lost = await asyncio.to_thread(self.hosts.directory.lost_of, workspace)
                found.extend(_lost_model(p).model_dump(mode="json") for p in lost)
            found.sort(key=lambda s: s["started_at"])
            await _send_json(send, 200, {"sandboxes": found})

    async def _host_list(self, host: HostView, scope: Scope, workspace: str) -> list[dict[str, Any]] | httpx.Response:
        response = await self._send(host.address, scope, workspace, b"")
        data = await response.aread()
        if 400 <= response.status_code < 500:
            return response
        response.raise_for_status()
        return json.loads(data)["sandboxes"]  # type: ignore[no-any-return]

    # -- talking to hosts

    def _url(self, address: str, scope: Scope) -> str:
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope.get("raw_path") or scope["path"].encode()
        return f"{address.rstrip('/')}{NODE_PREFIX}{path.decode('latin-1')}" + (f"?{query}" if query else "")

    def _headers(self, scope: Scope, workspace: str) -> list[tuple[bytes, bytes]]:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _NOT_FORWARDED]
        headers.append((b"authorization", f"Bearer {self.hosts.token}".encode()))
        headers.append((WORKSPACE_HEADER.encode(), workspace.encode()))
        return headers

    async def _send(self, address: str, scope: Scope, workspace: str, body: bytes) -> httpx.Response:
        request = self.hosts.client.build_request(
            scope["method"], self._url(address, scope), headers=self._headers(scope, workspace), content=body
        )
        try:
            return await self.hosts.client.send(request, stream=True)
        except httpx.TransportError as exc:
            log.warning("sandbox host at %s did not answer: %s", address, exc)
            raise Unavailable(
                "The sandbox's host is not answering; if it does not come back within a few seconds its "
                "sandboxes are declared lost",
                code="sandbox_host_unreachable",
                retry_after_s=1,
            ) from exc


@asynccontextmanager
async def _workspace(
    scope: Scope, receive: Receive, sandbox_id: str | None = None, rest: str = ""
) -> AsyncIterator[str]:
    """The caller's workspace, admitted by its key (or by a port link) as on the
    public sandbox API, until the response is sent."""
    port = _PORT_REST.match(rest)
    if port is not None:  # a link names the sandbox and port it opens
        scope = {**scope, "path_params": {"sandbox_id": sandbox_id, "port": port.group(1)}}
    owner = sandbox_owner(HTTPConnection(scope, receive))
    workspace = await anext(owner)
    try:
        yield workspace
    finally:
        await owner.aclose()


async def _answering_errors(handle: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Runs `handle`; a domain error before the response started is answered in
    the API's error shape."""
    started = False

    async def tracking(message: Message) -> None:
        nonlocal started
        if message["type"] in ("http.response.start", "websocket.accept", "websocket.close"):
            started = True
        await send(message)

    try:
        await handle(scope, receive, tracking)
    except TramontaneError as exc:
        if started:
            raise
        response = as_api_error(exc).response()
        if scope["type"] == "websocket":
            await send({"type": "websocket.http.response.start", "status": response.status_code,
                        "headers": response.raw_headers})  # fmt: skip
            await send({"type": "websocket.http.response.body", "body": response.body})
            return
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


async def _relay(response: httpx.Response, send: Send) -> None:
    await relay(
        response, send, _relayed_headers(response), lambda why: HostLost(f"the sandbox host's response broke off: {why}")
    )


def _relayed_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    # Content-Length is kept: the body is relayed byte for byte (still encoded).
    return [(k, v) for k, v in response.headers.raw if k.lower() not in _NOT_RELAYED]


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})




def _template_of(body: bytes) -> str:
    """The template a creation asks for; a malformed body goes to a host, which
    answers it with the API's validation error."""
    try:
        template = json.loads(body or b"{}").get("template", TIER1_TEMPLATE)
    except (ValueError, AttributeError):
        return TIER1_TEMPLATE
    return template if isinstance(template, str) else TIER1_TEMPLATE


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _lost_model(placement: Placement) -> LostSandboxModel:
    return LostSandboxModel(
        sandbox_id=placement.sandbox_id,
        template=placement.template,
        started_at=_utc(placement.created_at),
        lost_at=_utc(placement.ended_at) if placement.ended_at else None,
        reason=placement.reason or "its host stopped heartbeating",
        host=placement.host,
    )
