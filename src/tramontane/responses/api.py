"""HTTP routes of OpenAI's Responses API. Every route needs an inference key;
responses belong to the key's workspace, and another workspace's id is 404."""

from __future__ import annotations

from typing import Literal

from anyio.to_thread import run_sync as to_thread
from fastapi import APIRouter, Query
from starlette.responses import Response

from ..inference.fast_path import Call, InferenceKey, InferenceRoute
from ..inference.streaming import STREAMABLE
from .schemas import InputItemList, ResponseCreate, ResponseDeleted, ResponseObject
from .service import Responses


def create_router(responses: Responses) -> APIRouter:
    router = APIRouter(route_class=InferenceRoute)

    @router.post("/v1/responses", response_model=ResponseObject, responses=STREAMABLE)
    async def create_response(body: ResponseCreate, call: Call) -> Response | ResponseObject:
        return await responses.create(body, call)

    @router.get("/v1/responses/{response_id}", response_model=ResponseObject)
    async def get_response(response_id: str, principal: InferenceKey) -> ResponseObject:
        return await responses.get(principal.workspace_id, response_id)

    @router.delete("/v1/responses/{response_id}", response_model=ResponseDeleted)
    async def delete_response(response_id: str, principal: InferenceKey) -> ResponseDeleted:
        await responses.delete(principal.workspace_id, response_id)
        return ResponseDeleted(id=response_id)

    @router.post("/v1/responses/{response_id}/cancel", response_model=ResponseObject)
    async def cancel_response(response_id: str, principal: InferenceKey) -> ResponseObject:
        return await responses.cancel(principal.workspace_id, response_id)

    @router.get("/v1/responses/{response_id}/input_items", response_model=InputItemList)
    async def list_input_items(
        response_id: str,
        principal: InferenceKey,
        limit: int = Query(20, ge=1, le=100),
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> InputItemList:
        items = await to_thread(responses.store.input_items, principal.workspace_id, response_id)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return InputItemList(
            data=page,
            first_id=page[0]["id"] if page else None,
            last_id=page[-1]["id"] if page else None,
            has_more=len(items) > limit,
        )

    return router
