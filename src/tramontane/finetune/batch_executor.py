"""How the Batch API runs one request line: through the same code as the
/v1/chat/completions and /v1/embeddings routes, without an HTTP request, and
metered like one: a usage row (tokens, model, latency, energy) for the key that
created the job, counted against its token limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from pydantic import ValidationError

from ..engine import Priority, Tenant
from ..errors import APIError, Invalid, Unprocessable
from ..inference import chat, embeddings
from ..inference.generation import Share, current_share
from ..inference.metrics import Metrics
from ..inference.protocol import ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest, EmbeddingResponse
from ..inference.registry import ModelRegistry
from ..tenancy import EnergyReading, Principal, Tenancy
from .batch import BatchRequest, Executor, LineExecutor
from .models import BatchJobRow
from .ray_batch import RayBatch, RayLines

log = logging.getLogger(__name__)

# A line that the engine sheds (a 503: interactive work needed the room) is tried
# again after the pause the engine asks for, for up to this long in all.
BATCH_RETRY_S = 600.0


async def run_line(
    models: ModelRegistry, metrics: Metrics, workspace_id: str, endpoint: str, body: dict[str, Any]
) -> ChatCompletionResponse | EmbeddingResponse:
    """The response to one line, run on `models`; its workspace's fine-tuned
    models are among those it may name."""
    try:
        if endpoint == "/v1/chat/completions":
            chat_body = ChatCompletionRequest.model_validate(body)
            if chat_body.stream:
                raise Invalid("batch requests cannot stream", param="stream")
            return await chat.complete(models, metrics, chat_body, workspace_id)
        return await embeddings.embed(models, EmbeddingRequest.model_validate(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise Unprocessable(f"{location}: {first['msg']}", param=location or None) from None


class JobLines:
    """How one job's lines run (a LineExecutor), and what to release when it ends."""

    def __init__(self, execute: LineExecutor, close: Callable[[], Awaitable[None]] | None = None):
        self._execute = execute
        self._close = close

    async def __call__(self, request: BatchRequest) -> dict[str, Any]:
        return await self._execute(request)

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()


def batch_executor(
    models: ModelRegistry, metrics: Metrics, tenancy: Tenancy, ray: RayBatch | None = None
) -> Executor:
    """`ray`: run the lines that name a base model on a Ray actor of each job (see
    ray_batch.py); the others (fine-tuned adapters) on this gateway's engines."""

    async def run(job: BatchJobRow, remote: RayLines | None, request: BatchRequest) -> Any:
        if remote is not None and remote.serves(request.body.get("model")):
            return await remote.run(job.workspace_id, request)
        return await run_line(models, metrics, job.workspace_id, request.endpoint, request.body)

    def meter(
        principal: Principal,
        request: BatchRequest,
        response: ChatCompletionResponse | EmbeddingResponse,
        latency_s: float,
        energy: EnergyReading,
    ) -> None:
        tenancy.record_usage(
            principal,
            model=response.model,
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.total_tokens - response.usage.prompt_tokens,  # embeddings: 0
            request_id=request.request_id,
            latency_s=latency_s,
            energy=energy,
        )

    async def for_job(job: BatchJobRow) -> JobLines:
        # Looked up once per job: every line is metered as the key that created it.
        principal = await anyio.to_thread.run_sync(tenancy.key_principal, job.api_key_id) if job.api_key_id else None
        if principal is None:  # a job from before batch metering (a key goes only with its workspace)
            log.warning("batch job %s is not metered: it names no key", job.id)

        # Batch work has its own class: it yields the engine to interactive requests.
        weight = tenancy.scheduling_weight(principal) if principal else tenancy.admission.weight(job.workspace_id)
        tenant = Tenant(job.workspace_id, job.api_key_id or "", weight)
        share = Share(tenant, Priority.BATCH)
        remote = ray.lines(job.id) if ray is not None else None

        async def run_shared(request: BatchRequest) -> ChatCompletionResponse | EmbeddingResponse:
            token = current_share.set(share)
            deadline = time.monotonic() + BATCH_RETRY_S
            try:
                while True:
                    try:
                        return await run(job, remote, request)
                    except APIError as exc:
                        pause = exc.retry_after_s or 1.0
                        if exc.code != "engine_overloaded" or time.monotonic() + pause > deadline:
                            raise
                    await asyncio.sleep(pause)
            finally:
                current_share.reset(token)

        async def execute(request: BatchRequest) -> dict[str, Any]:
            span = tenancy.meter.begin()
            started = time.perf_counter()
            try:
                response = await run_shared(request)
            except BaseException:
                # Refused before the engine ran (bad body, unknown model): nothing to meter.
                tenancy.meter.finish(span)
                raise
            latency_s = time.perf_counter() - started
            energy = tenancy.meter.finish(span, response.usage.total_tokens)
            if principal is not None:
                await anyio.to_thread.run_sync(meter, principal, request, response, latency_s, energy)
            return response.model_dump(mode="json", exclude_none=True)

        return JobLines(execute, remote.aclose if remote is not None else None)

    return for_job
