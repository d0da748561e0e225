"""A following gateway's deployments API and router: requests under the control
plane's paths are relayed to the leading gateway, which alone holds the
deployments' replicas and their load.

While there is no leader (a takeover: the old one died and its lease has not yet
run out), a request waits up to `wait_s` for the next one, then gets a 503
`no_leader` with `Retry-After`. A request that could not reach the leader (its
connection was refused: the request never arrived) is sent again to the next
leader within the same wait; one that failed after reaching it gets a 503 too,
never a made-up answer. A forwarded request is never forwarded again: a gateway
that receives one and no longer leads answers 503, so a stale view of the lease
cannot make requests loop between gateways.

A response of known length up to 1 MiB is read whole from the leader before it
is passed on: if the leader dies mid-way, an idempotent request (GET, PUT,
DELETE, ...) goes to the next leader, another gets a 503 `leader_lost` with
Retry-After. A stream is relayed as it comes; a leader lost mid-stream drops the
client's connection, so a cut stream never looks complete."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Unavailable, as_api_error
from .domains import host_of
from .seat import ControlSeat

log = logging.getLogger(__name__)

FORWARDED_HEADER = b"x-tramontane-forwarded"
_HOP_BY_HOP = frozenset(
    {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"content-length",
     b"proxy-authorization", b"expect"}
)
# Requests sent again to the next leader when the one handling them died: the
# methods HTTP defines as idempotent.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_BUFFER_LIMIT = 1 << 20


class LeaderLost(Exception):
    """The leader died while its response was being relayed."""


class FollowerForwarding:
    def __init__(
        self,
        app: ASGIApp,
        seat: ControlSeat,
        prefixes: tuple[str, ...],
        *,
        client: httpx.AsyncClient,
        wait_s: float = 5.0,
    ):
        self.app = app
        self.seat = seat
        self.prefixes = prefixes
        self.client = client
        self.wait_s = wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seat.leading or not self._under_control(scope):
            await self.app(scope, receive, send)
            return
        if any(name == FORWARDED_HEADER for name, _ in scope["headers"]):
            await self._refuse(send, "This gateway no longer leads the control plane", "not_leader")
            return
        body = await read_body(receive)
        deadline = time.monotonic() + self.wait_s
        tried: set[str] = set()
        while True:
            leader = await self._leader(deadline, tried)
            if leader is None and self.seat.leading:  # this gateway took over meanwhile
                await self.app(scope, _replay(body, receive), send)
                return
            if leader is None:
                await self._refuse(send, "No gateway leads the control plane yet (a takeover is under way)",
                                   "no_leader")
                return
            retry = scope["method"] in _IDEMPOTENT
            try:
                response = await self.client.send(self._request(scope, leader, body), stream=True)
                whole = await _whole_body(response)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                tried.add(leader)  # it never got the request: the next leader may
                continue
            except httpx.HTTPError as exc:
                log.warning("forwarding to the leading gateway failed: %s", exc)
                if retry:
                    tried.add(leader)
                    continue
                await self._refuse(send, "The leading gateway was lost while handling the request", "leader_lost")
                return
            if whole is not None:
                await send({"type": "http.response.start", "status": response.status_code,
                            "headers": _response_headers(response)})
                await send({"type": "http.response.body", "body": whole, "more_body": False})
            else:
                await self._relay(response, send)
            return

    def _under_control(self, scope: Scope) -> bool:
        """Under the control plane's paths, or to a deployment's custom domain."""
        path = scope["path"]
        if any(path == p or path.startswith(p + "/") for p in self.prefixes):
            return True
        host = host_of(scope)
        return host is not None and self.seat.plane.domains.lookup(host) is not None

    async def _leader(self, deadline: float, tried: set[str]) -> str | None:
        """The leading gateway's address, waiting (until `deadline`) while there is
        none, or only one this request could not reach."""
        while True:
            leader = self.seat.leader
            if leader is not None and leader.address not in tried and not self.seat.leading:
                return leader.address
            if self.seat.leading:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            changed = self.seat.changed
            try:
                async with asyncio.timeout(min(remaining, self.seat.poll_s)):
                    await changed.wait()
            except TimeoutError:
                pass

    def _request(self, scope: Scope, address: str, body: bytes) -> httpx.Request:
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP]
        headers.append((FORWARDED_HEADER, b"1"))
        query = scope.get("query_string", b"")
        url = address.rstrip("/") + scope["raw_path"].decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        return self.client.build_request(scope["method"], url, headers=headers, content=body)

    async def _relay(self, response: httpx.Response, send: Send) -> None:
        await relay(
            response, send, _response_headers(response),
            lambda why: LeaderLost(f"the leading gateway's response broke off: {why}"),
        )  # fmt: skip

    async def _refuse(self, send: Send, message: str, code: str) -> None:
        response = as_api_error(Unavailable(message, code=code, retry_after_s=1)).response()
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})



async def _whole_body(response: httpx.Response) -> bytes | None:
    """A response of known, small length read whole before anything is sent on,
    so that a leader lost mid-way is retried or refused cleanly; None for a
    stream (server-sent events, large bodies), relayed as it comes."""
    length = response.headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > _BUFFER_LIMIT:
        return None
    try:
        return await response.aread()
    finally:
        await response.aclose()


def _response_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    # Content-Length is kept: the body is relayed byte for byte (still encoded).
    return [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP or k.lower() == b"content-length"]


def forwarding_client(timeout_s: float = 600.0) -> httpx.AsyncClient:
    """The followers' connections to the leader: no pool limit, since every request
    in flight holds one; a short connect timeout, since a dead leader must be
    noticed fast."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=2.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request's body, already read, then the client's own messages: the app
    must still learn when the client goes away, and only then (a router relaying
    a response stops at a disconnect, which would cut the response short)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def read_body(receive: Receive) -> bytes:
    """A request's whole body (what came before the client left, if it did)."""
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def relay(
    response: httpx.Response, send: Send, headers: list[tuple[bytes, bytes]], broken: Callable[[str], Exception]
) -> None:
    """Sends `response` on to the client as it comes, with `headers`. Once the
    status is sent, a body that breaks off raises `broken(why)`: the connection is
    dropped, so that the client sees a broken response, never a short one that
    looks whole."""
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError as exc:
        raise broken(str(exc)) from exc
    finally:
        await response.aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
