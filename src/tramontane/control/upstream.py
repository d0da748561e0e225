"""The router's HTTP/1.1 client to replicas: keep-alive connections per replica,
parsed with httptools (the C parser uvicorn serves with), on asyncio protocols.

Why not httpx or httpcore: the router forwards bytes it already has to a
loopback server it trusts, and their request and URL models, anyio streams and
pure-Python h11 parsing were most of the router's CPU per request. This does
only what a proxy needs: write one request, read the status and headers, then
relay the body as it arrives, with back-pressure, and pool the connection again
when the response ended cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httptools

_CONNECT_TIMEOUT_S = 5.0
# Body chunks buffered from a replica before reading from it pauses (a slow client).
_HIGH_WATER = 16
_IDLE_PER_REPLICA = 64
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class UpstreamError(ConnectionError):
    """The replica closed the connection or sent something that is not HTTP."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] | None = None
        self._chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.complete = False
        self._paused = False
        self._head_only = False
        self._keep_alive = False

    def begin(self, request: bytes, head_only: bool) -> None:
        assert self.transport is not None
        self._head = asyncio.get_running_loop().create_future()
        self._chunks = asyncio.Queue()
        self.headers, self.status, self.complete = [], 0, False
        # The answer to HEAD announces a body it does not send, which the parser
        # cannot know: the response ends with its headers, and the connection with it.
        self._head_only = head_only
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        if self.transport.is_closing():
            self._fail(UpstreamError("the replica closed the connection"))
        else:
            self.transport.write(request)

    async def head(self) -> None:
        assert self._head is not None
        await self._head

    @property
    def reusable(self) -> bool:
        return self.complete and not self.closed and not self._head_only and self._keep_alive

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._chunks.get()
            if self._paused and self._chunks.qsize() <= _HIGH_WATER // 4 and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the replica sent invalid HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head is not None and self._head.done() and not self.complete:
            # A body read until the connection closes ends here (a cut one too:
            # the status line is sent, nothing better can be done).
            self._chunks.put_nowait(None)
        else:
            self._fail(UpstreamError("the replica closed the connection"))

    # -- httptools callbacks ---------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        # Read here: the parser forgets it once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._head_only:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self._chunks.put_nowait(body)
        if not self._paused and self._chunks.qsize() > _HIGH_WATER and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self.complete = True
        self._chunks.put_nowait(None)

    def _fail(self, exc: BaseException) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        elif not self.complete:
            self._chunks.put_nowait(exc)


class UpstreamResponse:
    def __init__(self, pool: UpstreamPool, key: tuple[str, int], connection: _Connection):
        self._pool = pool
        self._key = key
        self._connection = connection
        self.status = connection.status
        self.headers = connection.headers

    def body(self) -> AsyncIterator[bytes]:
        return self._connection.body()

    def release(self) -> None:
        """Back to the pool when the response was read to its end; closed otherwise."""
        self._pool._release(self._key, self._connection)


class UpstreamPool:
    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def send(
        self, host: str, port: int, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        """Sends the request and returns once the status and headers are in.
        `headers` must hold Host (and Content-Length for a body)."""
        lines = [b"%s %s HTTP/1.1" % (method.encode(), target), *(b"%s: %s" % pair for pair in headers)]
        request = b"\r\n".join(lines) + b"\r\n\r\n" + body
        key = (host, port)
        idle = self._idle.get(key, [])
        while idle:
            connection = idle.pop()
            if connection.closed:  # the replica closed it while it was idle
                continue
            connection.begin(request, method == "HEAD")
            try:
                await connection.head()
            except UpstreamError:
                # Closed by the replica just as the request went out (an idle
                # timeout, most likely); whether it was processed is unknown, so
                # only a request that may be repeated goes again (RFC 9110 9.2.2).
                connection.close()
                if method in _IDEMPOTENT:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            return UpstreamResponse(self, key, connection)
        connection = await self._connect(host, port)
        connection.begin(request, method == "HEAD")
        try:
            await connection.head()
        except BaseException:
            connection.close()
            raise
        return UpstreamResponse(self, key, connection)

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            _, connection = await loop.create_connection(_Connection, host, port)
        return connection

    def _release(self, key: tuple[str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if connection.reusable and len(idle) < _IDLE_PER_REPLICA:
            idle.append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
