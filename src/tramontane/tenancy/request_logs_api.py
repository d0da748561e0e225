"""`/v1/request_logs`: a workspace's stored requests and responses, to any of its
inference keys. Another workspace's logs, and expired ones, are missing (404)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ..store import RequestLog
from .capabilities import Capability
from .dependencies import TenancyDep, require
from .errors import not_found
from .principal import KEY_PREFIX, Principal
from .request_logs import find_log, list_logs

router = APIRouter(prefix="/v1/request_logs", tags=["request logs"])

InferenceKey = Annotated[Principal, Depends(require(Capability.INFERENCE))]


class RequestLogOut(BaseModel):
    object: Literal["request_log"] = "request_log"
    # The list's cursor (`before_id`).
    id: int
    request_id: str
    # The public prefix of the key that made the request.
    key: str
    endpoint: str
    model: str
    created_at: datetime
    completed_at: datetime
    expires_at: datetime
    request: dict[str, Any]
    # The response as a non-streamed request gets it; a streamed one's is assembled.
    response: dict[str, Any] | None

    @classmethod
    def of(cls, row: RequestLog) -> RequestLogOut:
        return cls(
            id=row.id,
            request_id=row.request_id,
            key=f"{KEY_PREFIX}{row.api_key_id}",
            endpoint=row.endpoint,
            model=row.model,
            created_at=row.created_at,
            completed_at=row.completed_at,
            expires_at=row.expires_at,
            request=row.request,
            response=row.response,
        )


class RequestLogList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RequestLogOut]
    has_more: bool


@router.get("")
async def list_request_logs(
    principal: InferenceKey,
    tenancy: TenancyDep,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,  # a 64-bit row id
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> RequestLogList:
    """Newest first; pass the last one's `id` as `before_id` for the next page."""
    rows = await anyio.to_thread.run_sync(
        lambda: list_logs(tenancy.store, principal.workspace_id, before_id=before_id, limit=limit + 1)
    )
    return RequestLogList(data=[RequestLogOut.of(row) for row in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{request_id}")
async def get_request_log(request_id: str, principal: InferenceKey, tenancy: TenancyDep) -> RequestLogOut:
    row = await anyio.to_thread.run_sync(find_log, tenancy.store, principal.workspace_id, request_id)
    if row is None:
        raise not_found("request log", request_id)
    return RequestLogOut.of(row)
