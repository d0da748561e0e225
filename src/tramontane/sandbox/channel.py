"""The host's end of the JSON-lines conversation with a sandbox's agent.

Everything the agent says is untrusted, and every byte of it is bounded:

- the host's first line gives the agent a fresh key, and each line the agent
  sends must carry a MAC over its sequence number and content (see
  guest/agent.py); a line that does not is a breach, and ends the channel;
- lines are capped at MAX_LINE_BYTES (a longer one also ends the channel);
- events of unknown types, and those of requests nobody waits for, are dropped;
- what waits for its consumer is charged to the sandbox's `OutputBudget`, which
  also draws on the host-wide total: past either, output is dropped (counted) and
  other events fail their request with `output_limit`; all of it is released when
  the consumer takes it or the sandbox goes away.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from .errors import (
    AgentTimeout,
    Conflict,
    Forbidden,
    InvalidArgument,
    LimitReached,
    NotFound,
    OutOfSpace,
    PortRefused,
    SandboxDied,
    SandboxError,
    TooLarge,
)

logger = logging.getLogger("tramontane.sandbox")

# Longest line a well-behaved agent sends is a file chunk or a capped reply (2 MiB).
MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_BUFFERED_OUTPUT = 8 * 1024 * 1024  # per stream, unread by its consumer
# The agent is presumed hung when an operation waits this long and the agent says
# nothing at all meanwhile (it serves one request at a time, so a busy agent that
# is still sending other replies is not hung).
OP_TIMEOUT_S = 60.0
MAC_HEX = 32
TERMINAL_EVENTS = frozenset({"ok", "error", "exit", "result"})
# "data": bytes from a sandbox's port (flow-controlled, never dropped); "fs": a file
# watch's events (dropped, as inotify itself does, when nobody keeps up).
KNOWN_EVENTS = TERMINAL_EVENTS | {"start", "stdout", "stderr", "chunk", "data", "fs"}
DROPPABLE_EVENTS = frozenset({"stdout", "stderr", "fs"})
# A request's last event is small and always delivered (charged, even past the
# budget), so a request that was let in always ends; there is one per request.
SMALL_EVENT_BYTES = 64 * 1024

_ERROR_KINDS: dict[str, type[SandboxError]] = {
    "not_found": NotFound,
    "invalid": InvalidArgument,
    "not_regular": InvalidArgument,
    "cross_device": InvalidArgument,
    "exists": Conflict,
    "busy": Conflict,
    "permission": Forbidden,
    "no_space": OutOfSpace,
    "too_large": TooLarge,
    "pids_exhausted": LimitReached,
    "memory_exhausted": LimitReached,
    "nofile_exhausted": LimitReached,
    "output_limit": LimitReached,
    "refused": PortRefused,
}
_CODES = {
    "invalid": "invalid_argument",
    "exists": "already_exists",
    "permission": "permission_denied",
    "refused": "port_not_listening",
}


def agent_error(event: dict[str, Any]) -> SandboxError:
    kind = str(event.get("kind", ""))
    cls = _ERROR_KINDS.get(kind, SandboxError)
    code = _CODES.get(kind, kind) if cls is not SandboxError else "sandbox_error"
    return cls(str(event.get("message", "sandbox error"))[:2000], code=code)


class ByteBudget:
    """Bytes the server holds for all sandboxes together."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, size: int, force: bool = False) -> bool:
        if not force and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class OutputBudget:
    """Bytes the server holds for one sandbox, drawn from the host-wide total too."""

    def __init__(self, limit: int, total: ByteBudget):
        self.limit = limit
        self.total = total
        self.used = 0
        self.dropped_bytes = 0  # output dropped past a limit, or never asked for
        self.closed = False

    def take(self, size: int, force: bool = False) -> bool:
        if self.closed or (not force and self.used + size > self.limit):
            return False
        if not self.total.take(size, force):
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        if not self.closed:
            self.used -= size
            self.total.give(size)

    def close(self) -> None:
        """Gives back everything still held: the sandbox is gone."""
        if not self.closed:
            self.total.give(self.used)
            self.used = 0
            self.closed = True


class EventStream:
    """The events of one request, in order, ending with a terminal one."""

    def __init__(self, budget: OutputBudget, rid: int = 0) -> None:
        self._events: deque[tuple[dict[str, Any], int]] = deque()
        self._ready = asyncio.Event()
        self._budget = budget
        self._buffered_output = 0
        self.rid = rid
        self.failed = False  # an event could not be held: the request ended with output_limit
        self.done = False

    def put(self, event: dict[str, Any], size: int) -> None:
        kind = event.get("ev")
        if self.failed:
            self._budget.dropped_bytes += size
            return
        if kind in DROPPABLE_EVENTS:
            if self._buffered_output + size > MAX_BUFFERED_OUTPUT or not self._budget.take(size):
                self._budget.dropped_bytes += size
                return
            self._buffered_output += size
        elif not self._budget.take(size, force=kind in TERMINAL_EVENTS and size <= SMALL_EVENT_BYTES):
            self._budget.dropped_bytes += size
            self.failed = True
            size = 0
            event = {"ev": "error", "kind": "output_limit",
                     "message": "the sandbox sent more than the server holds for it at once "
                     f"({self._budget.limit} bytes); read its output as it comes, or less at once"}  # fmt: skip
        self._events.append((event, size))
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        event, size = self._events.popleft()
        self._budget.give(size)
        if event.get("ev") in DROPPABLE_EVENTS:
            self._buffered_output -= size
        return event

    def release(self) -> None:
        """Drops what is still buffered: its consumer left."""
        while self._events:
            _, size = self._events.popleft()
            self._budget.give(size)
        self._buffered_output = 0

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while not self.done:
            event = await self.get()
            if event.get("ev") in TERMINAL_EVENTS:
                self.done = True
            yield event


class AgentChannel:
    """`key` authenticates the agent's lines; send it with `hello()` before anything else."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        key: bytes,
        budget: OutputBudget,
        rekey: bool = False,
    ):
        """`rekey`: the agent already runs with another channel's key (a microVM
        resumed from disk); it is sent the new one in a request, and lines that
        fail the new key are dropped until one passes."""
        self._reader = reader
        self._writer = writer
        self._key = key
        self._seq = 0
        self._resyncing = rekey
        self.budget = budget
        self._next_id = 0
        self._streams: dict[int, EventStream] = {}
        self.last_heard = time.monotonic()
        self.closed = asyncio.get_running_loop().create_future()
        if rekey:
            # The newline first ends any request line the pause cut (the agent drops it).
            self._writer.write(b"\n" + json.dumps({"id": -1, "op": "rekey", "key": key.hex()}).encode() + b"\n")
        else:
            self._writer.write(key.hex().encode() + b"\n")
        self._task = asyncio.create_task(self._read_loop())

    @staticmethod
    def new_key() -> bytes:
        return secrets.token_bytes(32)

    def _authentic(self, line: bytes) -> bytes | None:
        """The line's content if its MAC is right; the sequence moves on. None: a
        line of the agent's previous channel, while the new key is not yet in use."""
        tag, content = line[:MAC_HEX], line[MAC_HEX + 1 : -1]
        expected = hashlib.blake2b(self._seq.to_bytes(8, "big") + content, key=self._key, digest_size=16)
        if line[MAC_HEX : MAC_HEX + 1] != b" " or not hmac.compare_digest(tag, expected.hexdigest().encode()):
            if self._resyncing:
                return None
            raise ValueError(f"line {self._seq} is not authentic")
        self._resyncing = False
        self._seq += 1
        return content

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.readline()  # ValueError past MAX_LINE_BYTES
                if not line.endswith(b"\n"):
                    break  # end of file, perhaps mid-line: the agent was killed
                self.last_heard = time.monotonic()
                content = self._authentic(line)
                if content is None:
                    self.budget.dropped_bytes += len(line)
                    continue
                event = json.loads(content)
                if not isinstance(event, dict):
                    raise ValueError("agent sent a non-object")
                stream = self._streams.get(event.get("id"))  # type: ignore[arg-type]
                if stream is None or event.get("ev") not in KNOWN_EVENTS:
                    self.budget.dropped_bytes += len(line)  # a request whose consumer went away
                    continue
                if event.get("ev") in TERMINAL_EVENTS:
                    del self._streams[event["id"]]
                stream.put(event, len(line))
                if stream.failed:
                    self._streams.pop(stream.rid, None)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("sandbox agent broke the protocol, closing its channel: %s", exc)
        except ConnectionError:
            pass
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.put({"ev": "error", "kind": "died", "message": "the sandbox stopped"}, 0)
        if not self.closed.done():
            self.closed.set_result(None)

    def open(self, op: str, **fields: Any) -> tuple[int, EventStream]:
        """Sends a request; its events arrive on the returned stream."""
        if self.closed.done():
            raise SandboxDied("the sandbox is not running")
        self._next_id += 1
        rid = self._next_id
        stream = self._streams[rid] = EventStream(self.budget, rid)
        self._writer.write(json.dumps({"id": rid, "op": op, **fields}).encode() + b"\n")
        return rid, stream

    def notify(self, op: str, **fields: Any) -> None:
        """Sends a request whose reply nobody waits for (it is dropped)."""
        if not self.closed.done():
            self._next_id += 1
            self._writer.write(json.dumps({"id": self._next_id, "op": op, **fields}).encode() + b"\n")

    def forget(self, rid: int, stream: EventStream | None = None) -> None:
        """Stops routing a request's events (its consumer left), and frees what it held."""
        found = self._streams.pop(rid, None) or stream
        if found is not None:
            found.release()

    async def call(self, op: str, timeout: float | None = OP_TIMEOUT_S, **fields: Any) -> dict[str, Any]:
        """A request answered by one "ok" (returned) or "error" (raised), within `timeout`."""
        rid, stream = self.open(op, **fields)
        try:
            await self.drain()
            event = await self.next_event(stream, op, timeout)
        finally:
            self.forget(rid, stream)
        return ok_or_raise(event)

    async def next_event(self, stream: EventStream, op: str, timeout: float | None = OP_TIMEOUT_S) -> dict[str, Any]:
        """The stream's next event; AgentTimeout if the agent stays silent `timeout` s."""
        if timeout is None:
            return await stream.get()
        started = time.monotonic()
        while True:
            silent = time.monotonic() - max(self.last_heard, started)
            if silent >= timeout:
                raise AgentTimeout(f"the sandbox's agent did not answer {op!r}: silent for {timeout:g} s")
            try:
                # Cancelling get() while it waits loses nothing: it takes an event only once one is there.
                return await asyncio.wait_for(stream.get(), timeout - silent)
            except TimeoutError:
                continue

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise SandboxDied("the sandbox is not running") from exc

    def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        self._fail_all()
        self.budget.close()


def ok_or_raise(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("ev") == "error":
        if event.get("kind") == "died":
            raise SandboxDied("the sandbox stopped during the operation")
        raise agent_error(event)
    return event

