"""Creating responses (whole, streamed or in the background), and the background
ones still running: retrieved live, cancelled, stopped with the server.

A background response outlives its HTTP request, so it is metered like a batch
line: a usage row for the creating key once it ends, with its own latency and energy."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.to_thread import run_sync as to_thread

from ..errors import Invalid
from ..inference.fast_path import InferenceCall
from ..inference.streaming import EventStreamResponse, until_disconnected
from ..store import Store
from ..tenancy import HeldSlot, Principal, Tenancy
from .events import sse
from .items import normalize_input
from .run import ResponseRun
from .schemas import ResponseCreate, ResponseObject
from .store import ResponseStore

log = logging.getLogger(__name__)


class Responses:
    def __init__(self, store: Store, tenancy: Tenancy):
        self.store = ResponseStore(store)
        self._tenancy = tenancy
        self._background: dict[str, tuple[str, ResponseRun, asyncio.Task[None]]] = {}

    async def create(self, body: ResponseCreate, call: InferenceCall) -> EventStreamResponse | ResponseObject:
        if body.background and (body.stream or not body.store):
            raise Invalid("a background response is stored and not streamed", param="background")
        workspace_id = call.principal.workspace_id
        items = normalize_input(body.input)
        context = await to_thread(self.store.context, workspace_id, body.previous_response_id) if (
            body.previous_response_id
        ) else []
        run = ResponseRun(call.models, call.metrics, body, workspace_id, context, items)
        if body.background:
            return await self._start_background(call.principal, run)
        call.meter.track(run.gen.model, [run.gen], response=lambda: run.response)
        if body.stream:
            await until_disconnected(call.request, run.start())
            return EventStreamResponse(call.meter.guard(self._stream(run, workspace_id)))
        try:
            response = await until_disconnected(call.request, run.complete())
        finally:
            if body.store:
                with anyio.CancelScope(shield=True):
                    await to_thread(self.store.save, workspace_id, run.response, run.input_items)
        return response

    async def _stream(self, run: ResponseRun, workspace_id: str) -> AsyncIterator[bytes]:
        try:
            async for event in run.events():
                yield sse(event)
        finally:
            run.stop()  # the client left before the end
            if run.response.store:
                with anyio.CancelScope(shield=True):
                    await to_thread(self.store.save, workspace_id, run.response, run.input_items)

    # -- background responses

    async def _start_background(self, principal: Principal, run: ResponseRun) -> ResponseObject:
        await to_thread(self.store.save, principal.workspace_id, run.response, run.input_items)
        # It goes on holding the request's concurrency slot: a workspace cannot get
        # round its limits by asking for its work in the background.
        slot = self._tenancy.detach_slot(principal)
        task = asyncio.create_task(self._run_background(principal, run, slot))
        self._background[run.response.id] = (principal.workspace_id, run, task)
        return run.response.model_copy()

    async def _run_background(self, principal: Principal, run: ResponseRun, slot: HeldSlot) -> None:
        span = self._tenancy.meter.begin()
        started = time.perf_counter()
        try:
            run.response.status = "in_progress"
            await run.complete()
        except asyncio.CancelledError:
            run.stop("cancelled")
        except Exception as exc:
            run.fail(exc)
        finally:
            self._background.pop(run.response.id, None)
            with anyio.CancelScope(shield=True):
                await self._tenancy.release_slot(slot)
                tokens = run.gen.prompt_tokens + run.gen.completion_tokens if run.gen.started else 0
                energy = self._tenancy.meter.finish(span, tokens)
                await to_thread(self.store.save, principal.workspace_id, run.response, run.input_items)
                if run.gen.started:
                    await to_thread(self._meter, principal, run, time.perf_counter() - started, energy)

    def _meter(self, principal: Principal, run: ResponseRun, latency_s: float, energy: Any) -> None:
        # The HTTP request's ticket was settled when it answered: this is a usage of its own.
        self._tenancy.record_usage(
            dataclasses.replace(principal, ticket=None),
            model=run.gen.model,
            prompt_tokens=run.gen.prompt_tokens,
            completion_tokens=run.gen.completion_tokens,
            request_id=run.response.id,
            latency_s=latency_s,
            energy=energy,
        )

    def _running(self, workspace_id: str, response_id: str) -> ResponseRun | None:
        entry = self._background.get(response_id)
        return entry[1] if entry is not None and entry[0] == workspace_id else None

    async def get(self, workspace_id: str, response_id: str) -> ResponseObject:
        running = self._running(workspace_id, response_id)
        if running is not None:
            live = running.response.model_copy()
            live.output = [dict(item) for item in running.builder.output]
            return live
        return await to_thread(self.store.get, workspace_id, response_id)

    async def cancel(self, workspace_id: str, response_id: str) -> ResponseObject:
        entry = self._background.get(response_id)
        if entry is not None and entry[0] == workspace_id:
            task = entry[2]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        response = await to_thread(self.store.get, workspace_id, response_id)
        if not response.background:
            raise Invalid("Only responses created with background=true can be cancelled", param="response_id")
        return response

    async def delete(self, workspace_id: str, response_id: str) -> None:
        if self._running(workspace_id, response_id) is not None:
            await self.cancel(workspace_id, response_id)
        await to_thread(self.store.delete, workspace_id, response_id)

    async def stop(self) -> None:
        """Cancels the background responses still running (the server is stopping)."""
        tasks = [task for _, _, task in self._background.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
