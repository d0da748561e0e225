"""FastAPI dependencies: `require(capability)` on every route that needs a key."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import Request

from .capabilities import Capability
from .principal import Principal
from .service import Tenancy


def get_tenancy(request: Request) -> Tenancy:
    return request.app.state.tenancy


def require(capability: Capability) -> Callable[[Request], Iterator[Principal]]:
    """A dependency yielding the caller's Principal once its key is valid (401
    otherwise), holds `capability` (403) and is within its limits (429).

    It holds the request's concurrency slot and energy meter until the response
    has been sent, streaming included (FastAPI ends yield dependencies after the
    response), so pass the principal to `Tenancy.record_usage` once the token
    counts are known."""

    def dependency(request: Request) -> Iterator[Principal]:
        tenancy = get_tenancy(request)
        where = f"{request.method} {request.url.path}"
        principal = tenancy.authenticate(request.headers.get("authorization"), where=where)
        tenancy.authorize(principal, capability, where=where)
        admitted = tenancy.admit(principal)
        try:
            yield admitted
        finally:
            tenancy.finish(admitted)

    return dependency
