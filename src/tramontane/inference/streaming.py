"""Server-sent events and tying generation to the client's connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse

from ..errors import ClientGone, as_api_error

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"

# OpenAPI for routes that answer JSON, or an event stream when the body asks for one.
STREAMABLE = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def sse(event: BaseModel) -> bytes:
    # exclude_unset: a chunk carries exactly the fields its builder set, so
    # `finish_reason: null` is sent while an absent `delta.role` is not.
    return b"data: " + event.model_dump_json(exclude_unset=True).encode() + b"\n\n"


def sse_error(exc: Exception) -> bytes:
    """A mid-stream failure; the openai SDK raises on an event with an "error" key."""
    return b"data: " + json.dumps(as_api_error(exc).body()).encode() + b"\n\n"


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes]):
        # no-transform and X-Accel-Buffering keep proxies from batching events.
        headers = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
        super().__init__(content, headers=headers)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Awaits `work`, cancelling it if the client goes away first.

    Starlette does not cancel a handler when its client disconnects; without this
    a long non-streamed generation would run to the end for nobody. (Streamed
    responses need no help: Starlette cancels the body iterator on disconnect.)
    `work` runs in the calling task, which a watcher task cancels on disconnect:
    one task per request rather than one more for `work` and a wait on both.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_disconnect(request)
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        # The cancellation unwinds the engine stream (which aborts it) before it gets here.
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        current.uncancel()
        # Nobody reads the answer; the edge shows it as 499 for logs and metrics.
        raise ClientGone("Client closed the request") from None
    finally:
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
