"""One engine request as a route sees it: start-up errors as HTTP errors, per-choice
accumulation, metrics, and an abort whenever its consumer stops (or is cancelled)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..engine import AsyncEngine, ImageInput, Priority, RequestOutput, SamplingParams, Tenant, TokenLogprob
from ..errors import as_api_error
from .metrics import Metrics
from .protocol import PromptTokensDetails, Usage


@dataclass(frozen=True)
class Share:
    """Whose share of the engine a generation takes, and at which priority class."""

    tenant: Tenant = Tenant()
    priority: Priority = Priority.INTERACTIVE


# Set for each request by whoever knows the caller (InferenceRoute for the API, the
# batch executor for its jobs), read by every Generation made while serving it: a
# route, or a conversation's model turn, cannot forget to pass it on.
current_share: ContextVar[Share] = ContextVar("current_share", default=Share())


@dataclass
class Choice:
    """A sequence's text, tokens and logprobs gathered over all steps."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class Generation:
    def __init__(
        self,
        engine: AsyncEngine,
        model: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        metrics: Metrics,
        id_prefix: str,
        images: Sequence[ImageInput] = (),
    ):
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.prompt_token_ids = prompt_token_ids
        self.num_cached_tokens = 0
        self.choices = [Choice() for _ in range(params.n)]
        self._timer = metrics.timer(model, time.perf_counter())
        share = current_share.get()
        self._stream = engine.generate(
            self.id, prompt_token_ids, params, tenant=share.tenant, priority=share.priority, images=images
        )
        self._first: RequestOutput | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.token_ids) for choice in self.choices)

    @property
    def started(self) -> bool:
        """Whether the engine accepted the request (a refused one used nothing)."""
        return self._first is not None

    async def start(self) -> None:
        """Waits for the first step, so that a refused request is still an HTTP error.

        The engine raises bad-request and overload errors before its first output;
        once a stream's headers are sent, only an in-band error event is left.
        """
        try:
            self._first = await anext(self._stream)
        except BaseException as exc:
            await self._stream.aclose()
            if isinstance(exc, Exception):
                raise as_api_error(exc) from None
            raise
        self._timer.prompt(self.prompt_tokens)

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """Engine outputs from the first on, each folded into `choices` before it is yielded.

        Closing this iterator early (client gone) closes the engine stream, which aborts it.
        """
        assert self._first is not None, "call start() first"
        try:
            out: RequestOutput | None = self._first
            while out is not None:
                self._absorb(out)
                yield out
                out = None if out.finished else await anext(self._stream)
        finally:
            await self._stream.aclose()

    async def run(self) -> None:
        """Runs to the end, for a non-streamed response."""
        await self.start()
        async for _ in self.outputs():
            pass

    async def close(self) -> None:
        """Aborts the request if it is still running."""
        await self._stream.aclose()

    def _absorb(self, out: RequestOutput) -> None:
        self.num_cached_tokens = out.num_cached_prompt_tokens
        self._timer.tokens(sum(len(o.delta_token_ids) for o in out.outputs))
        for o in out.outputs:
            choice = self.choices[o.index]
            choice.text = o.text
            choice.token_ids = o.token_ids
            choice.logprobs.extend(o.delta_logprobs)
            choice.finish_reason = o.finish_reason


def usage(gens: list[Generation]) -> Usage:
    prompt = sum(g.prompt_tokens for g in gens)
    completion = sum(g.completion_tokens for g in gens)
    cached = PromptTokensDetails(cached_tokens=sum(g.num_cached_tokens for g in gens))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=cached,
    )


async def run_all(gens: list[Generation], streamed: bool) -> None:
    """Starts (streamed) or runs all generations; on the first failure every other
    one is cancelled and closed, so that no engine request outlives the HTTP one."""
    try:
        async with asyncio.TaskGroup() as group:
            for gen in gens:
                group.create_task(gen.start() if streamed else gen.run())
    except BaseException as exc:  # a failed start, or the client gone (cancellation)
        for gen in gens:
            await gen.close()
        if isinstance(exc, BaseExceptionGroup):
            raise exc.exceptions[0] from None
        raise


async def merged_outputs(gens: list[Generation]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(generation index, output) pairs of started generations, as they come.

    Closing this iterator cancels the readers, which closes (aborts) every generation.
    """
    queue: asyncio.Queue[tuple[int, RequestOutput | Exception | None]] = asyncio.Queue()

    async def pump(i: int, gen: Generation) -> None:
        try:
            async for out in gen.outputs():
                queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except Exception as exc:
            queue.put_nowait((i, exc))

    tasks = [asyncio.create_task(pump(i, gen)) for i, gen in enumerate(gens)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
