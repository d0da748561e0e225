"""Calling the platform's own API from inside the process, as the signed-in key.

The console acts through the HTTP API itself rather than beside it, so every page
passes the very checks an API client meets: the key's validity, its capabilities,
its limits, metering and the workspace boundary. httpx's ASGITransport buffers a
whole response before returning it; this transport hands the body over as the
app sends it, so a streamed chat reaches the browser token by token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.types import ASGIApp, Message

_END = object()


class _QueueStream(httpx.AsyncByteStream):
    """The body of a response still being sent by the app; closing it early tells
    the app that its client went away and waits for the app to finish."""

    def __init__(self, queue: asyncio.Queue, task: asyncio.Task, disconnected: asyncio.Event):
        self._queue = queue
        self._task = task
        self._disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._queue.get()
            if chunk is _END:
                break
            yield chunk
        await self._task  # re-raises what the app raised after its last chunk

    async def aclose(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5.0)
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class StreamingASGITransport(httpx.AsyncBaseTransport):
    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 0)):
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": self.client,
            "root_path": "",
        }
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        queue: asyncio.Queue = asyncio.Queue()
        started: asyncio.Future = asyncio.get_running_loop().create_future()
        disconnected = asyncio.Event()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set_result((message["status"], message.get("headers", [])))
            elif message["type"] == "http.response.body":
                if chunk := message.get("body", b""):
                    queue.put_nowait(chunk)
                if not message.get("more_body", False):
                    queue.put_nowait(_END)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                if not started.done():
                    started.set_exception(RuntimeError("the app sent no response"))
                queue.put_nowait(_END)

        task = asyncio.get_running_loop().create_task(run())
        try:
            status, headers = await started
        except BaseException:
            task.cancel()
            raise
        return httpx.Response(status, headers=headers, stream=_QueueStream(queue, task, disconnected), request=request)


def api_client(app: ASGIApp) -> httpx.AsyncClient:
    """A client of `app`'s own API. The base URL is never dialled: no request leaves the process."""
    return httpx.AsyncClient(
        transport=StreamingASGITransport(app), base_url="http://console.internal", timeout=httpx.Timeout(600.0)
    )
