"""The tenancy side of /v1: who may call it, and what each call used.

Every /v1 route needs a key holding the inference capability (`InferenceKey`).
A route that runs a model tells its request's `RequestMeter` what it runs; the
meter records the request's usage once the response has been sent, streaming
included, whether it ended normally, failed or lost its client: the one place
where inference is metered. What the engine accepted is what gets metered: a
request it refused records nothing, one cut short records the tokens it got.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Request

from ..tenancy import Capability, Principal, Tenancy, TenancyError, get_tenancy, require
from .generation import Generation, usage

# A stream re-reads its key at its first event after this long, so that a key
# revoked (or expiring) mid-stream stops it within about a second; per event
# it would cost a database read per token.
KEY_RECHECK_S = 1.0

# One dependency object for the whole app: FastAPI runs it once per request
# however many routers and parameters ask for it.
inference_key = require(Capability.INFERENCE)
InferenceKey = Annotated[Principal, Depends(inference_key)]


class RequestMeter:
    """What one /v1 request runs, and (through `guard`) its stream's key checks."""

    def __init__(self, tenancy: Tenancy, principal: Principal, request: Request):
        self._tenancy = tenancy
        self._principal = principal
        self._request = request
        self._model: str | None = None
        self._gens: Sequence[Generation] = ()
        self._prompt_tokens = 0

    def track(self, model: str, gens: Sequence[Generation] = (), *, prompt_tokens: int = 0) -> None:
        """Meters `model`'s work for this request: `gens`, read when the response
        is done, plus `prompt_tokens` already counted (embeddings)."""
        self._model = model
        self._gens = gens
        self._prompt_tokens = prompt_tokens

    async def guard(self, events: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        """`events`, cut by an error event (and the generation aborted) as soon as
        the key is found revoked or expired."""
        checked = time.monotonic()
        async with aclosing(events):
            async for event in events:
                if time.monotonic() - checked >= KEY_RECHECK_S:
                    try:
                        await anyio.to_thread.run_sync(self._recheck_key)
                    except TenancyError as exc:
                        # The openai SDK raises on an event with an "error" key.
                        yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
                        return
                    checked = time.monotonic()
                yield event

    def _recheck_key(self) -> None:
        request = self._request
        self._tenancy.authenticate(request.headers.get("authorization"), where=f"{request.method} {request.url.path}")

    def record(self) -> None:
        if self._model is None:
            return
        started = [gen for gen in self._gens if gen.started]
        if self._gens and not started:
            return  # the engine refused every generation: nothing was used
        counts = usage(started)
        self._tenancy.record_usage(
            self._principal,
            model=self._model,
            prompt_tokens=counts.prompt_tokens + self._prompt_tokens,
            completion_tokens=counts.completion_tokens,
            request_id=self._request.state.request_id,
        )


async def request_meter(request: Request, principal: InferenceKey) -> AsyncIterator[RequestMeter]:
    # A yield dependency's exit runs after the response is sent (FastAPI's
    # request scope). Async, so that entering it costs no hop to a worker thread;
    # the database write at exit goes to one and blocks no one, shielded so that a
    # client gone mid-stream still gets its usage recorded.
    meter = RequestMeter(get_tenancy(request), principal, request)
    try:
        yield meter
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(meter.record)


Metered = Annotated[RequestMeter, Depends(request_meter)]
