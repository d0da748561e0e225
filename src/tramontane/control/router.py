"""The data plane: a plain ASGI app that proxies HTTP to a deployment's replicas.

A request goes to the deployment whose path prefix it falls under (the prefix is
removed), else to the one serving the JSON body's `model`. Within a deployment
the replica with the fewest outstanding requests gets it. Responses stream
through as they arrive, so server-sent events reach the client token by token.

Requests carry an API key with the inference capability and only reach their own
workspace's deployments.

Why raw ASGI rather than a FastAPI route: the router sits on every request's
path, and the framework's per-request work (a threadpool hop in and out of the
key dependency, dependency solving, a task group per streaming response) cost
more than the proxying itself. Here the key check runs inline (`Tenancy.enter`:
one indexed read; only writes go to a worker thread), the body is parsed only when no
path prefix matches, and bytes are relayed as they come over keep-alive
connections (upstream.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import quote

import anyio
from starlette.types import Receive, Scope, Send

from ..errors import APIError, NotFound, TramontaneError, as_api_error
from ..tenancy import Capability, Tenancy
from .domains import DOMAIN_SCOPE_KEY
from .errors import ReplicaUnavailable
from .plane import ControlPlane
from .spec import Kind
from .upstream import UpstreamResponse

# Hop-by-hop headers (RFC 9110 section 7.6.1), those set anew, and Expect (the body is already read).
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"expect",
        b"upgrade",
        b"content-length",
        b"authorization",
        b"proxy-authorization",
    }
)
# Set by the router itself for custom domains, never taken from the client.
_FORWARDED = frozenset({b"x-forwarded-host", b"x-forwarded-proto"})
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})
# Characters a path may carry unencoded (RFC 3986 pchar and "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
# Bodies larger than this are not parsed for a `model` field (only path routing).
_MODEL_SNIFF_LIMIT = 1 << 20


def _model_of(body: bytes, content_type: bytes) -> str | None:
    if not body or len(body) > _MODEL_SNIFF_LIMIT or b"json" not in content_type:
        return None
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class DeploymentsRouter:
    """The proxy, to mount where deployments are served (e.g. `/serve`)."""

    def __init__(self, plane: ControlPlane, tenancy: Tenancy):
        self.plane = plane
        self.tenancy = tenancy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        where = f"{method} {scope['path']}"
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        authorization = next((v.decode("latin-1") for k, v in headers if k == b"authorization"), None)
        try:
            principal = await self.tenancy.enter(authorization, Capability.INFERENCE, where=where)
        except (APIError, TramontaneError) as exc:
            await as_api_error(exc).response()(scope, receive, send)
            return
        try:
            await self._proxy(scope, receive, send, principal.workspace_id, authorization)
        except _ClientGone:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.tenancy.leave(principal)

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, workspace_id: str, authorization: str | None
    ) -> None:
        # Under a Starlette Mount, `path` is the full path and `root_path` ends with the mount point.
        path: str = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        body = await _read_body(receive)
        domain: str | None = scope.get(DOMAIN_SCOPE_KEY)
        model = None
        if domain is not None:
            # A custom domain's requests all go to its deployment, paths unchanged.
            found = self.plane.route_by_domain(workspace_id, domain, path)
        else:
            found = self.plane.route_by_prefix(workspace_id, path)
        if found is None and domain is None:
            content_type = next((v for k, v in headers if k == b"content-type"), b"")
            model = _model_of(body, content_type)
            found = self.plane.route_by_model(workspace_id, model, path) if model else None
        if found is None:
            where = f"domain '{domain}'" if domain else f"model '{model}'" if model else f"path '{path}'"
            missing = NotFound(f"No deployment serves {where}", code="deployment_not_found")
            await as_api_error(missing).response()(scope, receive, send)
            return
        deployment, forward_path = found
        forwarded = [(k, v) for k, v in headers if k not in _DROP_REQUEST]
        if domain is not None:
            # The app behind a custom domain learns the name and scheme it was called by.
            forwarded = [(k, v) for k, v in forwarded if k not in _FORWARDED]
            forwarded += [(b"x-forwarded-host", domain.encode()), (b"x-forwarded-proto", scope["scheme"].encode())]
        # A model replica is our own server and checks the key itself; a user's
        # command never sees the caller's key.
        if deployment.spec.kind is Kind.MODEL and authorization is not None:
            forwarded.append((b"authorization", authorization.encode("latin-1")))
        query = scope.get("query_string", b"")
        # ASGI gives the path decoded; it goes on encoded again.
        target = quote(forward_path, safe=_PATH_SAFE).encode() + (b"?" + query if query else b"")
        arrived = time.monotonic()
        # What the client got, for the deployment's request metrics; 499 (nginx's
        # "client closed request") when it went away before an answer.
        status = 499
        try:
            async with self.plane.acquire(deployment) as replica:
                assert replica.handle is not None
                host, port = replica.handle.host, replica.handle.port
                forwarded.append((b"host", b"%s:%d" % (host.encode(), port)))
                if body or scope["method"] in ("POST", "PUT", "PATCH"):
                    forwarded.append((b"content-length", b"%d" % len(body)))
                try:
                    response = await self.plane.upstream.send(host, port, scope["method"], target, forwarded, body)
                except (OSError, TimeoutError) as exc:
                    raise ReplicaUnavailable(
                        f"Replica {replica.id} of deployment '{deployment.name}' failed: {type(exc).__name__}"
                    ) from exc
                status = response.status
                try:
                    await self._relay(response, receive, send)
                finally:
                    response.release()
        except (APIError, TramontaneError) as exc:
            error = as_api_error(exc)
            status = error.status
            await error.response()(scope, receive, send)
        finally:
            deployment.request_stats.observe(status, time.monotonic() - arrived)

    async def _relay(self, response: UpstreamResponse, receive: Receive, send: Send) -> None:
        """Sends the upstream response on as it arrives. A client that goes away
        stops the relay (and so the replica's work on it); a replica dying
        mid-body ends the stream early: the status line is already sent, so the
        client sees a truncated body, not a 502."""
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k, v) for k, v in response.headers if k.lower() not in _DROP_RESPONSE],
            }
        )
        relay = asyncio.current_task()
        assert relay is not None
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, relay))
        try:
            async for chunk in response.body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:
            pass
        except asyncio.CancelledError:
            if not watcher.done():
                raise  # cancelled from outside, not by the watcher
            relay.uncancel()
            return
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(receive: Receive, relay: asyncio.Task[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    relay.cancel()


def create_router_app(plane: ControlPlane, tenancy: Tenancy) -> DeploymentsRouter:
    return DeploymentsRouter(plane, tenancy)


__all__ = ["DeploymentsRouter", "create_router_app"]
