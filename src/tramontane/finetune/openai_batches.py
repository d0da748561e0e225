"""OpenAI's Batch API (`/v1/batches`) over the same batch jobs as Mistral's
`/v1/batch/jobs`: one input file, an endpoint, a 24-hour window; input lines in
OpenAI's shape (`custom_id`, `method`, `url`, `body`), result and error files in
the shape both APIs share. Batches need an inference key; the input file is
uploaded through `/v1/files` with purpose `batch`."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from ..tenancy import Capability, Principal, require
from .batch import CANCELLATION_REQUESTED, CANCELLED, FAILED, QUEUED, RUNNING, SUCCESS
from .schemas import CreateBatchRequest
from .service import FineTuning

InferenceKey = Annotated[Principal, Depends(require(Capability.INFERENCE))]

# A batch's window: OpenAI accepts only this one.
WINDOW = timedelta(hours=24)
_STATUS = {
    QUEUED: "validating",
    RUNNING: "in_progress",
    SUCCESS: "completed",
    FAILED: "failed",
    CANCELLATION_REQUESTED: "cancelling",
    CANCELLED: "cancelled",
}


class CreateOpenAIBatch(BaseModel):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None


def openai_view(job: dict[str, Any]) -> dict[str, Any]:
    """A batch job (as `batch_view` shows it) in OpenAI's Batch shape."""
    status = _STATUS[job["status"]]
    ended = job["completed_at"]
    errors = [{"code": "batch_error", "message": e["message"], "line": None, "param": None} for e in job["errors"]]
    return {
        "id": job["id"],
        "object": "batch",
        "endpoint": job["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": job["input_files"][0],
        "completion_window": "24h",
        "status": status,
        "output_file_id": job["output_file"],
        "error_file_id": job["error_file"],
        "created_at": job["created_at"],
        "in_progress_at": job["started_at"],
        "expires_at": job["created_at"] + int(WINDOW.total_seconds()),
        "finalizing_at": ended if status == "completed" else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": {
            "total": job["total_requests"],
            "completed": job["succeeded_requests"],
            "failed": job["failed_requests"],
        },
        "metadata": job["metadata"],
    }


async def _service(request: Request) -> FineTuning:
    return request.app.state.finetune


Service = Annotated[FineTuning, Depends(_service)]
router = APIRouter(prefix="/v1/batches", tags=["batch"])


@router.post("")
async def create_batch(body: CreateOpenAIBatch, principal: InferenceKey, service: Service) -> dict[str, Any]:
    request = CreateBatchRequest(input_files=[body.input_file_id], endpoint=body.endpoint, metadata=body.metadata)
    return openai_view(await service.batches.create(principal.workspace_id, principal.key_id, request))


@router.get("")
async def list_batches(
    principal: InferenceKey,
    service: Service,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    jobs, has_more = await anyio.to_thread.run_sync(service.batches.page_after, principal.workspace_id, after, limit)
    data = [openai_view(job) for job in jobs]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@router.get("/{batch_id}")
async def get_batch(batch_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return openai_view(await anyio.to_thread.run_sync(service.batches.get, principal.workspace_id, batch_id))


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return openai_view(await service.batches.cancel(principal.workspace_id, batch_id))
