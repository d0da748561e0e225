"""How the Batch API runs one request line: through the same code as the
/v1/chat/completions and /v1/embeddings routes, without an HTTP request, and
metered like one: a usage row (tokens, model, latency, energy) for the key that
created the job, counted against its token limits."""

from __future__ import annotations

import asyncio
import logging
import time
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

log = logging.getLogger(__name__)

# A line that the engine sheds (a 503: interactive work needed the room) is tried
# again after the pause the engine asks for, for up to this long in all.
BATCH_RETRY_S = 600.0


def batch_executor(models: ModelRegistry, metrics: Metrics, tenancy: Tenancy) -> Executor:
    async def run(workspace_id: str, request: BatchRequest) -> ChatCompletionResponse | EmbeddingResponse:
        """The response to one line; its workspace's fine-tuned models are among those it may name."""
        try:
            if request.endpoint == "/v1/chat/completions":
                body = ChatCompletionRequest.model_validate(request.body)
                if body.stream:
                    raise Invalid("batch requests cannot stream", param="stream")
                return await chat.complete(models, metrics, body, workspace_id)
            return await embeddings.embed(models, EmbeddingRequest.model_validate(request.body))
        except ValidationError as exc:
            first = exc.errors()[0]
            location = ".".join(str(part) for part in first["loc"])
            raise Unprocessable(f"{location}: {first['msg']}", param=location or None) from None

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

    async def for_job(job: BatchJobRow) -> LineExecutor:
        # Looked up once per job: every line is metered as the key that created it.
        principal = await anyio.to_thread.run_sync(tenancy.key_principal, job.api_key_id) if job.api_key_id else None
        if principal is None:  # a job from before batch metering (a key goes only with its workspace)
            log.warning("batch job %s is not metered: it names no key", job.id)

        # Batch work has its own class: it yields the engine to interactive requests.
        weight = tenancy.scheduling_weight(principal) if principal else tenancy.admission.weight(job.workspace_id)
        tenant = Tenant(job.workspace_id, job.api_key_id or "", weight)
        share = Share(tenant, Priority.BATCH)

        async def run_shared(request: BatchRequest) -> ChatCompletionResponse | EmbeddingResponse:
            token = current_share.set(share)
            deadline = time.monotonic() + BATCH_RETRY_S
            try:
                while True:
                    try:
                        return await run(job.workspace_id, request)
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

        return execute

    return for_job
