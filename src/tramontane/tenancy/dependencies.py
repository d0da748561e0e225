"""FastAPI dependencies: `require(capability)` on every route that needs a key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from .capabilities import Capability
from .principal import Principal
from .service import Tenancy


def get_tenancy(request: HTTPConnection) -> Tenancy:
    return request.app.state.tenancy


async def _tenancy(request: Request) -> Tenancy:
    # Async: FastAPI runs a plain `def` dependency in a worker thread.
    return get_tenancy(request)


TenancyDep = Annotated[Tenancy, Depends(_tenancy)]


def require(capability: Capability) -> Callable[[HTTPConnection], AsyncIterator[Principal]]:
    """A dependency yielding the caller's Principal once its key is valid (401
    otherwise), holds `capability` (403) and is within its limits (429).

    It holds the request's concurrency slot and energy meter until the response
    has been sent, streaming included (FastAPI ends yield dependencies after the
    response), so pass the principal to `Tenancy.record_usage` once the token
    counts are known. On a WebSocket route, that is until the socket closes."""

    async def dependency(request: HTTPConnection) -> AsyncIterator[Principal]:
        admitted = await enter_request(request, capability)
        try:
            yield admitted
        finally:
            with anyio.CancelScope(shield=True):  # a client gone mid-stream still frees its slot
                await get_tenancy(request).leave(admitted)

    return dependency


async def enter_request(request: HTTPConnection, capability: Capability) -> Principal:
    """`Tenancy.enter` for the key `request` carries, audited under its method and
    path. Pair with `Tenancy.leave` once the response has been sent."""
    where = f"{request.scope.get('method', 'WEBSOCKET')} {request.scope['path']}"
    return await get_tenancy(request).enter(request.headers.get("authorization"), capability, where=where)
