"""`/v1/files`, `/v1/fine_tuning/jobs` and `/v1/batch/jobs`, readable by the
official mistralai and openai SDKs. Files and fine-tuning need a key with the
fine-tune capability, batch jobs the inference one; everything belongs to the
key's workspace and is missing (404) to any other."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from pydantic import ValidationError
from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse

from ..tenancy import Capability, Principal, require
from . import openai_batches
from .files import PURPOSES
from .openai_jobs import CreateOpenAIJob
from .openai_jobs import page as openai_page
from .schemas import CreateBatchRequest, CreateJobRequest
from .service import FineTuning
from .views import batch_view, file_view, job_view

FineTuneKey = Annotated[Principal, Depends(require(Capability.FINE_TUNE))]
InferenceKey = Annotated[Principal, Depends(require(Capability.INFERENCE))]
# Pages past this one would overflow a 64-bit OFFSET; nothing is there anyway.
Page = Annotated[int, Query(ge=0, le=1_000_000)]
PageSize = Annotated[int, Query(ge=1, le=1000)]


async def _service(request: Request) -> FineTuning:
    return request.app.state.finetune


Service = Annotated[FineTuning, Depends(_service)]


files = APIRouter(prefix="/v1/files", tags=["files"])


@files.post("")
async def upload_file(
    principal: FineTuneKey,
    service: Service,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form(description=f"one of {', '.join(PURPOSES)}")] = "fine-tune",
) -> dict[str, Any]:
    row = await anyio.to_thread.run_sync(
        service.files.create, principal.workspace_id, file.filename or "file", purpose, file.file
    )
    return file_view(row)


@files.get("")
def list_files(
    principal: FineTuneKey,
    service: Service,
    page: Page = 0,
    page_size: PageSize = 100,
    purpose: str | None = None,
    search: str | None = None,
) -> dict[str, Any]:
    rows, total = service.files.list(
        principal.workspace_id, purpose=purpose, page=page, page_size=page_size, search=search
    )
    return {
        "object": "list",
        "data": [file_view(r) for r in rows],
        "total": total,
        "has_more": (page + 1) * page_size < total,
    }


@files.get("/{file_id}")
def retrieve_file(file_id: str, principal: FineTuneKey, service: Service) -> dict[str, Any]:
    return file_view(service.files.get(principal.workspace_id, file_id))


@files.delete("/{file_id}")
def delete_file(file_id: str, principal: FineTuneKey, service: Service) -> dict[str, Any]:
    service.files.delete(principal.workspace_id, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@files.get("/{file_id}/content", response_class=FileResponse)
def download_file(file_id: str, principal: FineTuneKey, service: Service) -> FileResponse:
    row = service.files.get(principal.workspace_id, file_id)
    return FileResponse(service.files.path(row), media_type="application/octet-stream", filename=row.filename)


jobs = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


@jobs.post("")
def create_job(body: Annotated[dict[str, Any], Body()], principal: FineTuneKey, service: Service) -> dict[str, Any]:
    """Mistral's body (`training_files`) or OpenAI's (`training_file`); the job is
    shown in the shape it was created in. Validated here, so that a bad body's 422
    names its fields as the mistralai SDK expects (`["body", "training_files"]`)."""
    shape: type[CreateJobRequest] | type[CreateOpenAIJob] = (
        CreateOpenAIJob if "training_file" in body and "training_files" not in body else CreateJobRequest
    )
    try:
        request = shape.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    if isinstance(request, CreateOpenAIJob):
        return job_view(service.jobs.create(principal.workspace_id, request.as_mistral(), api="openai"))
    return job_view(service.jobs.create(principal.workspace_id, request))


@jobs.get("")
def list_jobs(
    principal: FineTuneKey,
    service: Service,
    page: Page = 0,
    page_size: PageSize = 100,
    model: str | None = None,
    status: str | None = None,
    created_after: datetime | None = None,
    suffix: str | None = None,
    after: str | None = None,
    limit: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> dict[str, Any]:
    """Mistral's pages (`page`, `page_size`), or OpenAI's cursor (`after`, `limit`)."""
    filters = {"model": model, "status": status, "created_after": created_after, "suffix": suffix}
    if after is None and limit is None:
        rows, total = service.jobs.list(principal.workspace_id, page=page, page_size=page_size, **filters)
        # has_more: the openai SDK pages on until it is false.
        more = (page + 1) * page_size < total
        views = [job_view(job, detailed=False) for job in rows]
        return {"object": "list", "total": total, "data": views, "has_more": more}
    every, _ = service.jobs.list(principal.workspace_id, page=0, page_size=1_000_000, **filters)
    return openai_page([job_view(job, detailed=False) for job in every], after, limit or 20)


@jobs.get("/{job_id}")
def get_job(job_id: str, principal: FineTuneKey, service: Service) -> dict[str, Any]:
    return job_view(service.jobs.get(principal.workspace_id, job_id))


@jobs.post("/{job_id}/start")
def start_job(job_id: str, principal: FineTuneKey, service: Service) -> dict[str, Any]:
    return job_view(service.jobs.start(principal.workspace_id, job_id))


@jobs.get("/{job_id}/events")
def list_job_events(
    job_id: str,
    principal: FineTuneKey,
    service: Service,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """OpenAI's list of the job's events, newest first."""
    return openai_page(service.jobs.openai_events(principal.workspace_id, job_id), after, limit)


@jobs.get("/{job_id}/checkpoints")
def list_job_checkpoints(
    job_id: str,
    principal: FineTuneKey,
    service: Service,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """OpenAI's list of the job's checkpoints, latest step first."""
    return openai_page(service.jobs.openai_checkpoints(principal.workspace_id, job_id), after, limit)


@jobs.post("/{job_id}/cancel")
def cancel_job(job_id: str, principal: FineTuneKey, service: Service) -> dict[str, Any]:
    return job_view(service.jobs.cancel(principal.workspace_id, job_id))


batches = APIRouter(prefix="/v1/batch/jobs", tags=["batch"])


@batches.post("")
async def create_batch(body: CreateBatchRequest, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return batch_view(await service.batches.create(principal.workspace_id, principal.key_id, body))


@batches.get("")
def list_batches(
    principal: InferenceKey,
    service: Service,
    page: Page = 0,
    page_size: PageSize = 100,
    model: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    created_after: datetime | None = None,
) -> dict[str, Any]:
    rows, total = service.batches.list(
        principal.workspace_id, page=page, page_size=page_size, model=model, status=status, created_after=created_after
    )
    return {"object": "list", "total": total, "data": [batch_view(job) for job in rows]}


@batches.get("/{job_id}")
def get_batch(job_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return batch_view(service.batches.get(principal.workspace_id, job_id))


@batches.post("/{job_id}/cancel")
async def cancel_batch(job_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return batch_view(await service.batches.cancel(principal.workspace_id, job_id))


@batches.delete("/{job_id}")
def delete_batch(job_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return service.batches.delete(principal.workspace_id, job_id)


# What the platform includes; its services come from `app.state.finetune`.
routers = (files, jobs, batches, openai_batches.router)
