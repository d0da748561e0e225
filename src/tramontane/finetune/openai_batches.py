"""OpenAI's Batch API (`/v1/batches`) over the same batch jobs as Mistral's
`/v1/batch/jobs`: one input file, an endpoint, a 24-hour window; input lines in
OpenAI's shape (`custom_id`, `method`, `url`, `body`), result and error files in
the shape both APIs share. Batches need an inference key; the input file is
uploaded through `/v1/files` with purpose `batch`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from ..tenancy import Capability, Principal, require
from .schemas import CreateBatchRequest
from .service import FineTuning
from .views import openai_batch_view

InferenceKey = Annotated[Principal, Depends(require(Capability.INFERENCE))]


class CreateOpenAIBatch(BaseModel):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None


async def _service(request: Request) -> FineTuning:
    return request.app.state.finetune


Service = Annotated[FineTuning, Depends(_service)]
router = APIRouter(prefix="/v1/batches", tags=["batch"])


@router.post("")
async def create_batch(body: CreateOpenAIBatch, principal: InferenceKey, service: Service) -> dict[str, Any]:
    request = CreateBatchRequest(input_files=[body.input_file_id], endpoint=body.endpoint, metadata=body.metadata)
    return openai_batch_view(await service.batches.create(principal.workspace_id, principal.key_id, request))


@router.get("")
async def list_batches(
    principal: InferenceKey,
    service: Service,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    jobs, has_more = await anyio.to_thread.run_sync(service.batches.page_after, principal.workspace_id, after, limit)
    data = [openai_batch_view(job) for job in jobs]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@router.get("/{batch_id}")
async def get_batch(batch_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return openai_batch_view(await anyio.to_thread.run_sync(service.batches.get, principal.workspace_id, batch_id))


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return openai_batch_view(await service.batches.cancel(principal.workspace_id, batch_id))
