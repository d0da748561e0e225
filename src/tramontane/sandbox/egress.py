"""The egress proxy of one sandbox: the only way out of its network namespace.

It listens on a Unix socket that is bind-mounted into the sandbox (the guest's
forwarder relays 127.0.0.1:3128 to it) and speaks just enough HTTP/1.1 proxying
for ordinary clients: CONNECT host:port for TLS, and absolute-URI requests
(`GET http://host/path`) for plain HTTP. Each request is checked against the
sandbox's allow-list, then the proxy resolves the name itself and connects to an
address it vetted, so neither the client's resolver nor a DNS answer pointing
inside the host's networks (rebinding, 169.254.169.254) can widen the list.
Refusals are answered with an HTTP status: 403 not allowed, 502 unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from .policy import EgressRule, IPAddress, canonical_ip, valid_host_name

logger = logging.getLogger("tramontane.sandbox.egress")

# Root-owned and searchable, not listable: each socket in it belongs to one sandbox's uid.
SOCKET_DIR = Path("/run/tramontane-egress")
MAX_CONNECTIONS = 64  # per sandbox, tunnels and plain requests together
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
CHUNK = 65536
# Hop-by-hop headers of the client-to-proxy leg; the upstream leg gets its own.
_METHOD = re.compile(r"[A-Z]{1,20}")
_HOP_HEADERS = {b"proxy-authorization", b"proxy-connection", b"connection", b"keep-alive"}


def egress_socket_path(sandbox: str) -> Path:
    SOCKET_DIR.mkdir(mode=0o711, exist_ok=True)
    path = SOCKET_DIR / f"{sandbox}.sock"
    path.unlink(missing_ok=True)  # left by a manager that did not shut down
    return path


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def _response(status: int, message: str) -> bytes:
    body = f"{message}\n".encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _split_authority(authority: str) -> tuple[str, int]:
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Refused(400, f"bad CONNECT target {authority!r}; expected host:port")
    return host.strip("[]"), int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


class EgressProxy:
    """Serves one sandbox's allow-list on `path` until `close()`."""

    def __init__(self, sandbox: str, path: Path, rules: tuple[EgressRule, ...]):
        self.sandbox = sandbox
        self.path = path
        self.rules = rules
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, uid: int) -> None:
        """Listens on the socket, which only `uid` (the sandbox's host uid) may use."""
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_HEAD_BYTES)
        os.chown(self.path, uid, uid)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._connections) >= MAX_CONNECTIONS:
                writer.write(_response(503, f"at most {MAX_CONNECTIONS} connections through the proxy"))
                return
            self._connections.add(task)
            await self._proxy(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        request_line, _, headers = head.partition(b"\r\n")
        method, target, version = (request_line.decode("latin-1").split(" ") + ["", ""])[:3]
        try:
            if not _METHOD.fullmatch(method):
                raise Refused(400, "not an HTTP request")
            if method == "CONNECT":
                host, port = _split_authority(target)
                forward = b""
            else:
                host, port, forward = self._origin_request(method, target, version, headers)
            upstream = await self._open(method, host.lower().rstrip("."), port)
        except Refused as refused:
            writer.write(_response(refused.status, str(refused)))
            await writer.drain()
            return
        up_reader, up_writer = upstream
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(forward)
        # The exchange is over when the server's side ends; the client's side may
        # end first (a half-close after the request) without ending it.
        sending = asyncio.create_task(_pipe(reader, up_writer))
        try:
            await _pipe(up_reader, writer)
        finally:
            sending.cancel()
            up_writer.close()

    @staticmethod
    def _origin_request(method: str, target: str, version: str, headers: bytes) -> tuple[str, int, bytes]:
        """The host, port and the request as the origin server should see it."""
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            raise Refused(400, "send absolute http:// URLs, or CONNECT for https")
        kept = [
            line for line in headers.split(b"\r\n")
            if line and line.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS
        ]  # fmt: skip
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        # One request per connection: the next one may be for another host.
        head = f"{method} {path} {version}\r\n".encode() + b"".join(line + b"\r\n" for line in kept)
        return url.hostname, url.port or 80, head + b"Connection: close\r\n\r\n"

    async def _open(self, method: str, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the first address of host:port the rules allow."""
        if canonical_ip(host) is None and not valid_host_name(host):
            raise Refused(400, "not a host name or IP address")  # not logged: it could be anything
        target = f"{host}:{port}"
        if not any(rule.matches(host, port) for rule in self.rules):
            self._log(method, target, "denied", "not on the allow-list")
            raise Refused(403, f"{target} is not on this sandbox's egress allow-list")
        literal = canonical_ip(host)
        try:
            addresses = [literal] if literal is not None else await self._resolve(host, port)
        except OSError:
            self._log(method, target, "failed", "name does not resolve")
            raise Refused(502, f"{host} does not resolve") from None
        allowed = [a for a in addresses if a.is_global or any(r.unlocks(a, port) for r in self.rules)]
        if not allowed:
            self._log(method, target, "denied", "non-public address not listed by IP")
            raise Refused(403, f"{target} resolves to a non-public address that is not on the allow-list")
        try:
            opened = await asyncio.wait_for(asyncio.open_connection(str(allowed[0]), port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            self._log(method, target, "failed", f"cannot connect to {allowed[0]}")
            raise Refused(502, f"cannot connect to {target}") from None
        self._log(method, target, "allowed", str(allowed[0]))
        return opened

    @staticmethod
    async def _resolve(host: str, port: int) -> list[IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found = [canonical_ip(str(info[4][0])) for info in infos]
        return [a for a in found if a is not None]

    def _log(self, method: str, target: str, outcome: str, detail: str) -> None:
        # Host and port only: paths and headers may carry credentials.
        logger.info("sandbox %s egress %s %s %s (%s)", self.sandbox, method, target, outcome, detail)
