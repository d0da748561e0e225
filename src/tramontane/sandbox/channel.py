"""The host's end of the JSON-lines conversation with a sandbox's agent.

Everything the agent says is untrusted: lines are size-capped, unknown request
ids are ignored, and output a slow consumer does not read is dropped past a
bound (counted, never buffered without limit) so a chatty sandbox cannot grow
the host's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from .errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    OutOfSpace,
    SandboxDied,
    SandboxError,
    TooLarge,
)

logger = logging.getLogger("tramontane.sandbox")

MAX_LINE_BYTES = 128 * 1024 * 1024  # a base64 file transfer at the file size limit fits
MAX_BUFFERED_OUTPUT = 8 * 1024 * 1024  # per stream, unread by its consumer
TERMINAL_EVENTS = frozenset({"ok", "error", "exit", "result"})

_ERROR_KINDS: dict[str, type[SandboxError]] = {
    "not_found": NotFound,
    "invalid": InvalidArgument,
    "exists": Conflict,
    "busy": Conflict,
    "permission": Forbidden,
    "no_space": OutOfSpace,
    "too_large": TooLarge,
}


def agent_error(event: dict[str, Any]) -> SandboxError:
    kind = str(event.get("kind", ""))
    cls = _ERROR_KINDS.get(kind, SandboxError)
    return cls(str(event.get("message", "sandbox error"))[:2000], code=kind if cls is SandboxError else None)


class EventStream:
    """The events of one request, in order, ending with a terminal one."""

    def __init__(self) -> None:
        self._events: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()
        self._buffered = 0
        self.dropped_bytes = 0
        self.done = False

    def put(self, event: dict[str, Any]) -> None:
        if event.get("ev") in ("stdout", "stderr"):
            size = len(event.get("data", ""))
            if self._buffered + size > MAX_BUFFERED_OUTPUT:
                self.dropped_bytes += size
                return
            self._buffered += size
        self._events.append(event)
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        event = self._events.popleft()
        if event.get("ev") in ("stdout", "stderr"):
            self._buffered -= len(event.get("data", ""))
        return event

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while not self.done:
            event = await self.get()
            if event.get("ev") in TERMINAL_EVENTS:
                self.done = True
            yield event


class AgentChannel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._streams: dict[int, EventStream] = {}
        self.closed = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError("agent sent a non-object")
                stream = self._streams.get(event.get("id"))  # type: ignore[arg-type]
                if stream is None:
                    continue  # a request whose consumer went away
                if event.get("ev") in TERMINAL_EVENTS:
                    del self._streams[event["id"]]
                stream.put(event)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("sandbox agent broke the protocol: %s", exc)
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.put({"ev": "error", "kind": "died", "message": "the sandbox stopped"})
        if not self.closed.done():
            self.closed.set_result(None)

    def open(self, op: str, **fields: Any) -> tuple[int, EventStream]:
        """Sends a request; its events arrive on the returned stream."""
        if self.closed.done():
            raise SandboxDied("the sandbox is not running")
        self._next_id += 1
        rid = self._next_id
        stream = self._streams[rid] = EventStream()
        self._writer.write(json.dumps({"id": rid, "op": op, **fields}).encode() + b"\n")
        return rid, stream

    def forget(self, rid: int) -> None:
        """Stops routing a request's events (its consumer left)."""
        self._streams.pop(rid, None)

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """A request answered by one "ok" (returned) or "error" (raised)."""
        rid, stream = self.open(op, **fields)
        try:
            await self.drain()
            event = await stream.get()
        finally:
            self.forget(rid)
        if event.get("ev") == "error":
            if event.get("kind") == "died":
                raise SandboxDied("the sandbox stopped during the operation")
            raise agent_error(event)
        return event

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise SandboxDied("the sandbox is not running") from exc

    def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        self._fail_all()
