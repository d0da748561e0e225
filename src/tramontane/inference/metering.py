"""The tenancy side of /v1: who may call it, and what each call used.

Every inference route (`fast_path.InferenceRoute`) needs a key holding the
inference capability, checked before FastAPI solves the route's parameters, and
gives its request a `RequestMeter`. A route that
runs a model tells its request's `RequestMeter` (`Metered`) what it runs; the
meter records the request's usage once the response has been sent, streaming
included, whether it ended normally, failed or lost its client: the one place
where inference is metered. What the engine accepted is what gets metered: a
request it refused records nothing, one cut short records the tokens it got.

When the key's workspace opted in, the meter also queues the request and its
response (for a stream, the response assembled from what was generated) for
storage, after the response has been sent and without waiting for the write.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Request
from pydantic import BaseModel

from ..errors import TramontaneError, as_api_error
from ..store.types import utcnow
from ..tenancy import Principal, RequestLogEntry, Tenancy
from .generation import Generation, usage

log = logging.getLogger(__name__)

# A stream re-reads its key at its first event after this long, so that a key
# revoked (or expiring) mid-stream stops it within about a second; per event
# it would cost a database read per token.
KEY_RECHECK_S = 1.0


class RequestMeter:
    """What one /v1 request runs, and (through `guard`) its stream's key checks."""

    def __init__(self, tenancy: Tenancy, principal: Principal, request: Request):
        self._tenancy = tenancy
        self.principal = principal
        self._request = request
        self._model: str | None = None
        self._gens: Sequence[Generation] = ()
        self._prompt_tokens = 0
        self._response: Callable[[], BaseModel] | None = None
        self._started_at = utcnow()

    @property
    def request(self) -> Request:
        return self._request

    def track(
        self,
        model: str,
        gens: Sequence[Generation] = (),
        *,
        prompt_tokens: int = 0,
        response: Callable[[], BaseModel] | None = None,
    ) -> None:
        """Meters `model`'s work for this request: `gens`, read when the response
        is done, plus `prompt_tokens` already counted (embeddings). `response`
        builds the whole response once `gens` are done, should the request be stored."""
        self._model = model
        self._gens = gens
        self._prompt_tokens = prompt_tokens
        self._response = response

    @property
    def stores_request(self) -> bool:
        return self._model is not None and self.principal.request_log_retention_days is not None

    async def guard(self, events: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        """`events`, cut by an error event (and the generation aborted) as soon as
        the key is found revoked or expired."""
        checked = time.monotonic()
        async with aclosing(events):
            async for event in events:
                if time.monotonic() - checked >= KEY_RECHECK_S:
                    try:
                        await anyio.to_thread.run_sync(self._recheck_key)
                    except TramontaneError as exc:
                        # The openai SDK raises on an event with an "error" key.
                        yield b"data: " + json.dumps(as_api_error(exc).body()).encode() + b"\n\n"
                        return
                    checked = time.monotonic()
                yield event

    def _recheck_key(self) -> None:
        request = self._request
        self._tenancy.authenticate(request.headers.get("authorization"), where=f"{request.method} {request.url.path}")

    def record(self, request_body: bytes | None = None) -> None:
        """Meters the request and, given its body, queues it for storage; both are
        written by background threads."""
        if self._model is None:
            return
        started = [gen for gen in self._gens if gen.started]
        if self._gens and not started:
            return  # the engine refused every generation: nothing was used
        # Queued first, so that once a request's usage is recorded its log is queued.
        if request_body is not None and self.stores_request:
            try:
                self._store(json.loads(request_body))
            except Exception as exc:  # its usage is recorded all the same
                log.error("could not queue request %s's log: %s", self._request.state.request_id, type(exc).__name__)
                self._tenancy.request_logs.count_dropped()
        counts = usage(started)
        self._tenancy.submit_usage(
            self.principal,
            model=self._model,
            prompt_tokens=counts.prompt_tokens + self._prompt_tokens,
            completion_tokens=counts.completion_tokens,
            request_id=self._request.state.request_id,
        )

    def _store(self, request_json: dict[str, Any]) -> None:
        principal = self.principal
        assert self._model is not None and principal.request_log_retention_days is not None
        response = self._response() if self._response is not None else None
        self._tenancy.request_logs.submit(
            RequestLogEntry(
                workspace_id=principal.workspace_id,
                api_key_id=principal.key_id,
                request_id=self._request.state.request_id,
                endpoint=self._request.url.path,
                model=self._model,
                created_at=self._started_at,
                completed_at=utcnow(),
                retention_days=principal.request_log_retention_days,
                request=request_json,
                response=response.model_dump(mode="json", exclude_none=True) if response is not None else None,
            )
        )

    async def finish(self) -> None:
        """Once the response has been sent: records the usage and frees the key's
        concurrency slot, even for a client gone mid-stream."""
        with anyio.CancelScope(shield=True):
            try:
                # FastAPI read (and kept) the JSON body before calling the route.
                self.record(await self._request.body() if self.stores_request else None)
            finally:
                await self._tenancy.leave(self.principal)
