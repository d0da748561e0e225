"""The playground: chat with a served model, streamed token by token.

The browser posts the conversation here; the console streams it through the
platform's own /v1/chat/completions as the signed-in key (metered, limited and
logged like any API call) and adds one last event with what the platform measured
for the answer: its energy and latency, read from the usage record."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.responses import Response, StreamingResponse

from ..store import UsageRecord
from ..tenancy import Capability, get_tenancy
from .web import ConsoleRoute, CurrentUser, api_failure

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

# How long the final event waits for the answer's usage record (written in the
# background, milliseconds after the stream ends).
USAGE_WAIT_S = 2.0


class ChatIn(BaseModel):
    """What the playground sends: the chat request's fields it offers, no others."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=256)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=200)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=64)


@router.get("/playground")
async def playground(user: CurrentUser, model: str | None = None) -> Response:
    user.require(Capability.INFERENCE)
    models = (await user.json("GET", "/v1/models"))["data"]
    chat_models = [m for m in models if m["capabilities"].get("completion_chat")]
    selected = model if any(m["id"] == model for m in chat_models) else (chat_models[0]["id"] if chat_models else None)
    return user.render("playground.html", title="Playground", models=chat_models, selected=selected)


@router.post("/playground/chat")
async def chat(body: ChatIn, user: CurrentUser, request: Request) -> Response:
    user.require(Capability.INFERENCE)
    payload = body.model_dump(exclude_none=True) | {"stream": True, "stream_options": {"include_usage": True}}
    upstream = await user.api.send(
        user.api.build_request(
            "POST",
            "/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {user.session.key}", "Accept": "text/event-stream"},
        ),
        stream=True,
    )
    if upstream.status_code >= 400:
        await upstream.aread()
        await upstream.aclose()
        failure = api_failure(upstream)
        return Response(
            json.dumps({"error": failure.message, "code": failure.code}),
            status_code=failure.status,
            media_type="application/json",
        )
    request_id = upstream.headers.get("x-request-id")
    workspace_id = user.principal.workspace_id
    tenancy = get_tenancy(request)

    async def events() -> AsyncIterator[bytes]:
        started = time.perf_counter()
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
        measured = await _measured(tenancy, workspace_id, request_id)
        measured["server_elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
        yield f"event: tramontane.metrics\ndata: {json.dumps(measured)}\n\n".encode()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


async def _measured(tenancy: Any, workspace_id: str, request_id: str | None) -> dict[str, Any]:
    """The answer's usage record (energy, latency), once the background writer stored it."""
    if request_id is None:
        return {}
    statement = select(UsageRecord.energy_wh, UsageRecord.energy_source, UsageRecord.latency_ms).where(
        UsageRecord.workspace_id == workspace_id, UsageRecord.request_id == request_id
    )
    deadline = time.monotonic() + USAGE_WAIT_S
    def read() -> Any:
        with tenancy.store.read() as connection:
            return connection.execute(statement).first()

    while True:
        row = await anyio.to_thread.run_sync(read)
        if row is not None:
            return {
                "request_id": request_id,
                "energy_wh": row.energy_wh,
                "energy_source": row.energy_source,
                "latency_ms": row.latency_ms,
            }
        if time.monotonic() > deadline:
            return {"request_id": request_id}
        await asyncio.sleep(0.05)
