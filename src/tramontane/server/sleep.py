"""Light sleep of a model replica, driven by the control plane that started it.

`POST /control/sleep` frees every chat engine's KV cache (and moves GPU weights
to pinned host memory); `POST /control/wake` brings them back. The routes exist
only on a replica (its control plane sets TRAMONTANE_REPLICA_TOKEN) and take
that token, not an API key: they belong to the control plane, not to tenants."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header

from ..engine import EngineError
from ..errors import Conflict, Unauthorized
from ..inference.registry import ModelRegistry


def sleep_router(registry: ModelRegistry, token: str) -> APIRouter:
    async def control_plane_only(authorization: Annotated[str | None, Header()] = None) -> None:
        if not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
            raise Unauthorized("Only the control plane may put this replica to sleep", code="invalid_api_key")

    router = APIRouter(prefix="/control", dependencies=[Depends(control_plane_only)], include_in_schema=False)

    @router.post("/sleep")
    async def sleep() -> dict[str, bool]:
        for _, engine in registry.engines():
            try:
                await engine.sleep()
            except EngineError as exc:
                raise Conflict(str(exc), code="busy") from exc
        return {"asleep": True}

    @router.post("/wake")
    async def wake() -> dict[str, bool]:
        for _, engine in registry.engines():
            await engine.wake_up()
        return {"asleep": False}

    return router
