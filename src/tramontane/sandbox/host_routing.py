"""Host-based URLs for exposed ports: `{port}-{sandbox_id}.{domain}` (E2B's shape),
where the operator points a wildcard DNS name and certificate at the platform.

Every request whose Host is such a name is the sandbox port's, whatever its path:
it is rewritten to `/v1/sandboxes/{sandbox_id}/ports/{port}{path}` and goes
through the same authentication, workspace check and proxy as the path-based
URL, and nothing else of the platform (its API, its console) answers on that
name. The server inside sees itself at the root (no X-Forwarded-Prefix), so
root-relative links work, and each port of each sandbox is an origin of its own
in a browser, apart from the platform's.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

HOST_ROUTED = "tramontane.sandbox.host_routed"


class PortHostRouting:
    def __init__(self, app: ASGIApp, domain: str):
        self.app = app
        self.pattern = re.compile(rf"^(\d{{1,5}})-([0-9a-f]{{8,64}})\.{re.escape(domain.lower().strip('.'))}(:\d+)?$")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            match = self.pattern.match(_host(scope))
            if match is not None:
                port, sandbox_id = match.group(1), match.group(2)
                prefix = f"/v1/sandboxes/{sandbox_id}/ports/{port}"
                scope = {
                    **scope,
                    "path": prefix + scope["path"],
                    "raw_path": prefix.encode() + scope.get("raw_path", scope["path"].encode()),
                    HOST_ROUTED: True,
                }
        await self.app(scope, receive, send)


def _host(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return value.decode("latin-1").lower()
    return ""
