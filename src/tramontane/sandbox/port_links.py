"""Signed links to an exposed port, for a browser, which cannot send the
`Authorization` header: `?token=` on the first request, then an HttpOnly cookie
scoped to that port's URL, so the page's own subresources and WebSockets follow.

A token is `{key id}.{expiry}.{signature}`: HMAC-SHA256, under a server secret,
over the sandbox id, the port, the key id and the expiry. It names no secret of
the key and opens that one port of that one sandbox until it expires. The
platform checks, on every request, the signature and expiry here, then the key
(still valid, still holding the sandbox capability) and the sandbox's workspace
as for a request carrying the key, so revoking the key kills its links.

`PortLinkCredentials` takes the token and the cookie off every request to a port
before anything else sees it: the server inside the sandbox never gets either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Unauthorized
from ..store.private_files import load_server_secret
from .host_routing import HOST_ROUTED

SECRET_ENV = "TRAMONTANE_PORT_LINK_SECRET"
SECRET_FILE = "port-link-secret"
MIN_SECRET_CHARS = 32
DEFAULT_EXPIRES_S = 3600
MAX_EXPIRES_S = 24 * 3600
TOKEN_PARAM = "token"
COOKIE = "tramontane_port_link"
# Where the platform's dependencies find the link a request carries.
PORT_LINK = "tramontane.sandbox.port_link"

_PORT_PATH = re.compile(r"^/v1/sandboxes/([^/]+)/ports/(\d{1,5})(?:/|$)")
_TOKEN = re.compile(r"^([A-Za-z0-9]{1,64})\.(\d{1,12})\.([A-Za-z0-9_-]{43})$")


def load_secret(home: Path) -> bytes:
    """`$TRAMONTANE_PORT_LINK_SECRET` (servers behind one name must share it),
    else a random secret created once, mode 0600, in `home`."""
    return load_server_secret(home / SECRET_FILE, SECRET_ENV, MIN_SECRET_CHARS)


@dataclass(frozen=True)
class LinkClaim:
    key_id: str
    expires_at: int  # Unix seconds


class LinkSigner:
    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time):
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"a port link secret is at least {MIN_SECRET_CHARS} bytes")
        self._secret = secret
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    def sign(self, sandbox_id: str, port: int, key_id: str, expires_at: int) -> str:
        return f"{key_id}.{expires_at}.{self._mac(sandbox_id, port, key_id, expires_at)}"

    def verify(self, token: str, sandbox_id: str, port: int) -> LinkClaim:
        """The key and expiry of a token signed for this sandbox's `port`; a
        malformed, tampered, foreign or expired one raises a 401."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise Unauthorized("This link's token is malformed", code="invalid_link_token")
        key_id, expires_at, mac = match.group(1), int(match.group(2)), match.group(3)
        if not hmac.compare_digest(mac, self._mac(sandbox_id, port, key_id, expires_at)):
            raise Unauthorized("This link's token is not valid for this sandbox port", code="invalid_link_token")
        if expires_at <= self.now():
            raise Unauthorized("This link has expired; create a new one", code="link_expired")
        return LinkClaim(key_id, expires_at)

    def _mac(self, sandbox_id: str, port: int, key_id: str, expires_at: int) -> str:
        message = f"tramontane-port-link/1\n{sandbox_id}\n{port}\n{key_id}\n{expires_at}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class PortLink:
    """The link credentials of one request to a port: candidate tokens, the query's
    first. The platform calls `accept` once it admitted one."""

    sandbox_id: str
    port: int
    tokens: list[str]
    from_query: bool
    accepted: str | None = field(default=None)  # the token admitted
    max_age_s: int = 0

    def accept(self, token: str, claim: LinkClaim, now: int) -> None:
        self.accepted, self.max_age_s = token, max(0, claim.expires_at - now)


class PortLinkCredentials:
    """ASGI middleware in front of the port routes (behind host routing, which
    rewrites a port's host name to its path): moves `?token=` and the link cookie
    from the request into `scope[PORT_LINK]`, so neither reaches the server in the
    sandbox, and sets the cookie on the response to an accepted `?token=` request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PORT_PATH.match(scope["path"]) if scope["type"] in ("http", "websocket") else None
        if match is None:
            await self.app(scope, receive, send)
            return
        query, from_query = _take_query_tokens(scope.get("query_string", b""))
        headers, from_cookie = _take_cookie_tokens(scope.get("headers", []))
        scope = {**scope, "query_string": query, "headers": headers}
        tokens = from_query + from_cookie
        if not tokens:
            await self.app(scope, receive, send)
            return
        link = PortLink(match.group(1), int(match.group(2)), tokens, bool(from_query))
        scope[PORT_LINK] = link
        if scope["type"] != "http" or not link.from_query:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and link.accepted is not None:
                extra = [(b"set-cookie", _cookie(scope, link).encode("latin-1")),
                         # The token is in this page's URL: not to be sent on as a Referer.
                         (b"referrer-policy", b"no-referrer")]  # fmt: skip
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _take_query_tokens(query: bytes) -> tuple[bytes, list[str]]:
    """The query without its link tokens (the rest byte for byte), and their values.
    A `token` of another shape is the sandboxed server's own (Jupyter's, say) and stays."""
    kept, tokens = [], []
    for part in query.split(b"&") if query else []:
        name, _, value = part.partition(b"=")
        token = unquote_plus(value.decode("latin-1"))
        if unquote_plus(name.decode("latin-1")) == TOKEN_PARAM and _TOKEN.fullmatch(token):
            tokens.append(token)
        else:
            kept.append(part)
    return b"&".join(kept), tokens


def _take_cookie_tokens(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    kept, tokens = [], []
    for name, value in headers:
        if name != b"cookie":
            kept.append((name, value))
            continue
        others = []
        for pair in value.decode("latin-1").split(";"):
            key, _, cookie = pair.strip().partition("=")
            if key == COOKIE:
                tokens.append(cookie.strip('"'))
            elif pair.strip():
                others.append(pair.strip())
        if others:
            kept.append((name, "; ".join(others).encode("latin-1")))
    return kept, tokens


def _cookie(scope: Scope, link: PortLink) -> str:
    """Host-only, for this port's URL alone: the root of its own host name, or its
    path on the platform's."""
    path = "/" if scope.get(HOST_ROUTED) else f"/v1/sandboxes/{link.sandbox_id}/ports/{link.port}"
    secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
    return f"{COOKIE}={link.accepted}; Max-Age={link.max_age_s}; Path={path}; HttpOnly; SameSite=Lax{secure}"


class RedactLinkTokens(logging.Filter):
    """Blanks `token=` values in access log lines (uvicorn's logs the query):
    a link's token opens the port to whoever reads it."""

    _PATTERN = re.compile(r"((?:^|[?&])token=)[^&\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "token=" in a for a in record.args):
            record.args = tuple(self._PATTERN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                                for a in record.args)  # fmt: skip
        return True
