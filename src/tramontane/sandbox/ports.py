"""Exposed ports: HTTP to a server listening inside a sandbox, from the platform's
router (`/v1/sandboxes/{id}/ports/{port}/...`).

The host never joins the sandbox's network: each connection is a byte stream the
sandbox's agent opens to loopback inside the sandbox (tier 1: its own network
namespace; tier 2: the guest's) and relays over its authenticated channel, so a
port proxy can reach that sandbox's loopback and nothing else, not the host's
ports nor another sandbox's. httpcore speaks HTTP/1.1 over that stream (a network
backend of its own), so requests and responses stream both ways.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpcore

from .channel import AgentChannel, EventStream, ok_or_raise
from .errors import InvalidArgument, SandboxError, UpstreamFailed
from .process import ChannelUser

SEND_CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0
# Never forwarded: per-hop headers, and the caller's credentials, which are the
# platform's and none of the sandboxed server's business.
DROPPED_REQUEST_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "authorization", "cookie",
})  # fmt: skip
DROPPED_RESPONSE_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "set-cookie", "x-content-type-options",
})  # fmt: skip


# Added to every proxied response: what a sandbox serves is the tenant's content on
# the platform's origin, so a browser must treat it as an origin of its own (no
# access to the platform's cookies or storage) and not guess its type.
RESPONSE_HEADERS = [
    ("Content-Security-Policy", "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"),
    ("X-Content-Type-Options", "nosniff"),
]


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise InvalidArgument("port must be 1 to 65535", param="port")
    return port


class PortStream(httpcore.AsyncNetworkStream):
    """One TCP connection to `port` on the sandbox's loopback, through its agent."""

    def __init__(self, sandbox: ChannelUser, port: int):
        self._sandbox = sandbox
        self._port = port
        self._stack = AsyncExitStack()
        self._channel: AgentChannel | None = None
        self._rid = 0
        self._events: EventStream | None = None
        self._leftover = b""
        self._eof = False

    async def open(self, timeout: float | None) -> None:
        channel = self._channel = await self._stack.enter_async_context(self._sandbox.use())
        self._rid, self._events = channel.open("port_open", port=self._port)
        try:
            await channel.drain()
            ok_or_raise(await channel.next_event(self._events, "port_open", timeout or CONNECT_TIMEOUT_S))
        except BaseException:
            channel.forget(self._rid, self._events)
            await self._stack.aclose()
            raise

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        while not self._leftover and not self._eof:
            assert self._events is not None and self._channel is not None
            try:
                event = await asyncio.wait_for(self._events.get(), timeout or READ_TIMEOUT_S)
            except TimeoutError:
                raise httpcore.ReadTimeout(f"port {self._port} sent nothing for {timeout or READ_TIMEOUT_S:g} s")
            kind = event.get("ev")
            if kind == "data":
                try:
                    data = base64.b64decode(str(event.get("data")), validate=True)
                except binascii.Error as exc:
                    raise SandboxError("the sandbox sent malformed port data") from exc
                self._channel.notify("port_ack", conn=self._rid, bytes=len(data))
                self._leftover = data
            elif kind == "exit":
                self._eof = True
            else:
                ok_or_raise(event)
                raise SandboxError(f"unexpected event {kind!r} on a port connection")
        data, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        assert self._channel is not None
        for start in range(0, len(buffer), SEND_CHUNK):
            chunk = base64.b64encode(buffer[start : start + SEND_CHUNK]).decode()
            await self._channel.call("port_send", conn=self._rid, data=chunk)

    async def aclose(self) -> None:
        if self._channel is not None and self._events is not None:
            if not self._eof:
                self._channel.notify("port_close", conn=self._rid)
            self._channel.forget(self._rid, self._events)
            self._channel = None
        await self._stack.aclose()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise InvalidArgument("ports are reached over plain HTTP inside the sandbox")

    def get_extra_info(self, info: str) -> Any:
        return None


class PortBackend(httpcore.AsyncNetworkBackend):
    """Every connection goes to the sandbox's port, whatever host the URL names."""

    def __init__(self, sandbox: ChannelUser, port: int):
        self._sandbox, self._port = sandbox, port

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        stream = PortStream(self._sandbox, self._port)
        await stream.open(timeout)
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class ProxiedResponse:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]


def _forwarded(name: str) -> bool:
    # The caller's own X-Forwarded-* are not to be trusted by the server inside.
    return name.lower().startswith("x-forwarded-")


def forwarded_headers(headers: Iterable[tuple[str, str]], port: int, prefix: str) -> list[tuple[str, str]]:
    """The request's end-to-end headers for the server in the sandbox. A body of
    unknown length (chunked from the client) is sent on chunked again."""
    headers = list(headers)
    kept = [(k, v) for k, v in headers if k.lower() not in DROPPED_REQUEST_HEADERS and not _forwarded(k)]
    chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
    framing = [("Transfer-Encoding", "chunked")] if chunked else []
    forwarded = [("X-Forwarded-Prefix", prefix)] if prefix else []
    return [("Host", f"localhost:{port}"), *kept, *framing, *forwarded]


class Ports:
    def __init__(self, sandbox: ChannelUser):
        self._sandbox = sandbox

    async def request(
        self,
        port: int,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: AsyncIterator[bytes] | bytes,
    ) -> ProxiedResponse:
        """Sends one HTTP request to `port` (`target`: path and query); the response
        body streams, and the connection closes once it is read or closed."""
        check_port(port)
        pool = httpcore.AsyncConnectionPool(network_backend=PortBackend(self._sandbox, port), max_connections=1)
        request = httpcore.Request(
            method, f"http://localhost:{port}{target}", headers=headers, content=body,
            extensions={"timeout": {"connect": CONNECT_TIMEOUT_S, "read": READ_TIMEOUT_S}},
        )  # fmt: skip
        try:
            response = await pool.handle_async_request(request)
        except (httpcore.ProtocolError, httpcore.ReadTimeout, httpcore.ReadError, httpcore.WriteError) as exc:
            await pool.aclose()
            raise UpstreamFailed(f"the server on port {port} did not answer with HTTP: {exc}",
                                 code="port_bad_response") from exc  # fmt: skip
        except BaseException:
            await pool.aclose()
            raise

        async def body_stream() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_stream():
                    yield chunk
            except httpcore.ReadTimeout:
                pass  # the status is sent: all that is left is to end the body
            finally:
                await response.aclose()
                await pool.aclose()

        kept = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers
                if k.decode("latin-1").lower() not in DROPPED_RESPONSE_HEADERS]  # fmt: skip
        return ProxiedResponse(response.status, kept + RESPONSE_HEADERS, body_stream())
