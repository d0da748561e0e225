"""The router's upstream client against a real loopback server that can close
kept-alive connections, answer HEAD and stream chunked bodies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tramontane.control.upstream import UpstreamError, UpstreamPool


class Replica:
    """A raw HTTP/1.1 server: counts connections, closes each after `per_connection` answers."""

    def __init__(self, per_connection: int = 100):
        self.per_connection = per_connection
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        for _ in range(self.per_connection):
            head = await reader.readuntil(b"\r\n\r\n")
            method, target = head.split(b" ")[:2]
            if target == b"/stream":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for i in range(3):
                    writer.write(b"7\r\nchunk %d\r\n" % i)
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif target == b"/drop":
                break
            elif target == b"/garbage":
                writer.write(b"this is not HTTP\r\n\r\n")
            else:
                body = b"" if method == b"HEAD" else target
                head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-echo: %s\r\n\r\n" % (len(target), target)
                writer.write(head + body)
            await writer.drain()
        writer.close()


@pytest.fixture
async def replica() -> AsyncIterator[tuple[Replica, int]]:
    app = Replica(per_connection=2)
    server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
    async with server:
        yield app, server.sockets[0].getsockname()[1]


async def _get(pool: UpstreamPool, port: int, target: bytes, method: str = "GET") -> tuple[int, dict, bytes]:
    response = await pool.send("127.0.0.1", port, method, target, [(b"host", b"replica")], b"")
    try:
        body = b"".join([chunk async for chunk in response.body()])
    finally:
        response.release()
    return response.status, dict(response.headers), body


async def test_keep_alive_reuse_and_a_closed_connection_is_replaced(replica: tuple[Replica, int]) -> None:
    app, port = replica
    pool = UpstreamPool()
    try:
        # Two answers per connection, then the server closes it: the third request
        # finds the kept connection dead and goes on a new one, unharmed.
        for i in range(5):
            status, headers, body = await _get(pool, port, b"/n%d" % i)
            assert (status, headers[b"x-echo"], body) == (200, b"/n%d" % i, b"/n%d" % i)
            await asyncio.sleep(0.01)
        assert app.connections == 3
    finally:
        await pool.aclose()


async def test_only_idempotent_requests_go_again_when_the_connection_drops(replica: tuple[Replica, int]) -> None:
    app, port = replica
    pool = UpstreamPool()
    try:
        # /drop: the replica reads the request and closes without answering, as
        # one whose idle timeout fires just as the request arrives.
        await _get(pool, port, b"/first")
        with pytest.raises(UpstreamError, match="closed"):
            await _get(pool, port, b"/drop")
        assert app.connections == 2  # the kept one, then once more on a new one
        await _get(pool, port, b"/again")
        with pytest.raises(UpstreamError, match="closed"):
            await pool.send("127.0.0.1", port, "POST", b"/drop", [(b"host", b"r"), (b"content-length", b"0")], b"")
        assert app.connections == 3  # never sent twice
    finally:
        await pool.aclose()


async def test_head_and_chunked_streams(replica: tuple[Replica, int]) -> None:
    _, port = replica
    pool = UpstreamPool()
    try:
        status, headers, body = await _get(pool, port, b"/headed", method="HEAD")
        assert status == 200 and headers[b"content-length"] == b"7" and body == b""
        status, _, body = await _get(pool, port, b"/stream")
        assert body == b"chunk 0chunk 1chunk 2"
        with pytest.raises(UpstreamError, match="invalid HTTP"):
            await _get(pool, port, b"/garbage")
    finally:
        await pool.aclose()
