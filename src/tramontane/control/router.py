"""The data plane: an ASGI app that proxies HTTP to a deployment's replicas.

A request goes to the deployment whose path prefix it falls under (the prefix is
removed), else to the one serving the JSON body's `model`. Within a deployment
the replica with the fewest outstanding requests gets it. Responses stream
through as they arrive, so server-sent events reach the client token by token.

Requests carry an API key with the inference capability and only reach their own
workspace's deployments."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from ..tenancy import Capability, Principal, Tenancy, require
from .errors import ControlError, ReplicaUnavailable
from .plane import ControlPlane
from .spec import Kind

# Hop-by-hop headers (RFC 9110 section 7.6.1) and those httpx recomputes.
_DROP_REQUEST = {
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "authorization",
    "proxy-authorization",
}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length"}
# Bodies larger than this are not parsed for a `model` field (only path routing).
_MODEL_SNIFF_LIMIT = 1 << 20

Inference = Annotated[Principal, Depends(require(Capability.INFERENCE))]


def _model_of(body: bytes, content_type: str) -> str | None:
    if not body or len(body) > _MODEL_SNIFF_LIMIT or "json" not in content_type:
        return None
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


def create_router_app(plane: ControlPlane, tenancy: Tenancy) -> FastAPI:
    """The proxy app, to mount where deployments are served (e.g. `/serve`)."""
    app = FastAPI(title="Tramontane deployments router")
    tenancy.install(app)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def proxy(path: str, request: Request, principal: Inference) -> Response:
        body = await request.body()
        model = _model_of(body, request.headers.get("content-type", ""))
        found = plane.route(principal.workspace_id, "/" + path, model)
        if found is None:
            where = f"model '{model}'" if model else f"path '/{path}'"
            raise ControlError(404, f"No deployment serves {where}", code="deployment_not_found")
        deployment, forward_path = found
        upstream = plane.proxy_client
        stack = AsyncExitStack()
        try:
            replica = await stack.enter_async_context(plane.acquire(deployment))
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
            # A model replica is our own server and checks the key itself; a user's
            # command never sees the caller's key.
            if deployment.spec.kind is Kind.MODEL and "authorization" in request.headers:
                headers["authorization"] = request.headers["authorization"]
            upstream_request = upstream.build_request(
                request.method,
                replica.url + forward_path,
                params=request.query_params.multi_items(),
                headers=headers,
                content=body,
            )
            try:
                response = await upstream.send(upstream_request, stream=True)
            except httpx.HTTPError as exc:
                raise ReplicaUnavailable(
                    f"Replica {replica.id} of deployment '{deployment.name}' failed: {type(exc).__name__}"
                ) from exc
            stack.push_async_callback(response.aclose)
        except BaseException:
            await stack.aclose()
            raise
        return StreamingResponse(
            _relay(response, stack),
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in _DROP_RESPONSE},
        )

    return app


async def _relay(response: httpx.Response, stack: AsyncExitStack) -> AsyncIterator[bytes]:
    """The upstream body, chunk by chunk; the replica's request slot is released
    when it ends. A replica dying mid-body ends the stream early: the status line
    is already sent, so the client sees a truncated body, not a 502."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        return
    finally:
        await stack.aclose()


__all__ = ["create_router_app"]
