"""Asyncio front end: many concurrent requests, one engine loop thread.

Callers on the event loop never touch engine state directly: adds, aborts and LoRA
adapter changes go through a command queue that the loop thread drains between steps, and outputs
come back through a per-request asyncio.Queue. A step never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import EngineConfig
from .errors import EngineDeadError, EngineError
from .llm_engine import EngineStats, LLMEngine
from .multimodal import ImageInput
from .outputs import RequestOutput
from .sampling_params import SamplingParams
from .sequence import ANONYMOUS, Priority, Tenant

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.dead: BaseException | None = None

    @classmethod
    def from_path(
        cls, path: str, config: EngineConfig | None = None, on_progress: Callable[[int, int], None] | None = None
    ) -> AsyncEngine:
        return cls(LLMEngine.from_path(path, config, on_progress))

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_config(self):
        return self.engine.model_config

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
            self._thread.start()

    async def shutdown(self) -> None:
        """Stops the loop after its current step; whoever still waits on a request
        gets an EngineDeadError rather than waiting for ever."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for stream in list(self._streams.values()):
            stream.put(EngineDeadError("the engine is shutting down"))

    def num_in_flight(self) -> int:
        """Requests whose callers still wait on them."""
        return len(self._streams)

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        tenant: Tenant = ANONYMOUS,
        priority: Priority = Priority.INTERACTIVE,
        images: Sequence[ImageInput] = (),
    ) -> AsyncIterator[RequestOutput]:
        """The request's outputs as they come. `tenant` and `priority`: its share of
        the engine (scheduler.py); `images`: those of the prompt (LLMEngine.add_request).
        Closing the iterator early aborts the request."""
        if self.dead is not None:
            raise EngineDeadError(f"the engine stopped: {self.dead}")
        if self._stopping:
            raise EngineDeadError("the engine is shutting down")
        if request_id in self._streams:
            raise EngineError(f"request id {request_id!r} is already in use")
        self.engine.check_request(prompt_token_ids, params, priority, images)  # fail fast, before queueing
        stream = _Stream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        self._commands.put(("add", request_id, list(prompt_token_ids), params, tenant, priority, tuple(images)))
        self._wakeup.set()
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._commands.put(("abort", request_id))
                self._wakeup.set()
            self._streams.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wakeup.set()

    async def sleep(self) -> None:
        """Light sleep (LLMEngine.sleep), run on the engine thread between steps."""
        await self._call(self.engine.sleep)

    async def wake_up(self) -> None:
        await self._call(self.engine.wake_up)

    async def add_lora(self, name: str, path: str) -> None:
        """Serve the PEFT LoRA adapter in `path` as `name`; ModelLoadError if it does
        not fit the base model. The files are read off the event loop and the engine thread."""
        adapter = await asyncio.to_thread(self.engine.loras.load, name, path)
        await self._call(self.engine.loras.add, adapter)

    async def remove_lora(self, name: str) -> None:
        """New requests can no longer name it; requests already running finish with it."""
        await self._call(self.engine.remove_lora, name)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs fn(*args) on the loop thread, between steps, and returns its result."""
        if self.dead is not None:
            raise EngineDeadError(f"the engine stopped: {self.dead}")
        if self._thread is None:  # not started: no step can race with it
            return fn(*args)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._commands.put(("call", future, fn, args))
        self._wakeup.set()
        return await future

    # -- the loop thread -----------------------------------------------------------

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "call":
                self._run_call(*command[1:])
                continue
            request_id = command[1]
            if command[0] == "add":
                if request_id not in self._streams:
                    continue  # its caller left before the engine saw it
                try:
                    self.engine.add_request(
                        request_id, command[2], command[3], tenant=command[4], priority=command[5], images=command[6]
                    )
                except EngineError as exc:
                    if (stream := self._streams.get(request_id)) is not None:
                        stream.put(exc)
            else:
                out = self.engine.abort(request_id)
                if out is not None and (stream := self._streams.get(request_id)) is not None:
                    stream.put(out)
        self._deliver_shed()

    def _deliver_shed(self) -> None:
        for request_id, exc in self.engine.pop_shed():
            if (stream := self._streams.get(request_id)) is not None:
                stream.put(exc)

    @staticmethod
    def _run_call(future: asyncio.Future, fn: Callable[..., Any], args: tuple) -> None:
        def settle(result: Any, exc: BaseException | None) -> None:
            if future.cancelled():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        try:
            result, exc = fn(*args), None
        except Exception as e:  # the caller's error; the engine goes on
            result, exc = None, e
        future.get_loop().call_soon_threadsafe(settle, result, exc)

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._apply_commands()
                if not self.engine.has_work():
                    self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                for out in self.engine.step():
                    if (stream := self._streams.get(out.request_id)) is not None:
                        stream.put(out)
                self._deliver_shed()
        except BaseException as exc:  # a bug in the loop: fail every waiter, loudly
            log.exception("engine loop crashed")
            self.dead = exc
            for stream in list(self._streams.values()):
                stream.put(EngineDeadError(f"the engine stopped: {exc}"))
        finally:
            self._fail_pending_calls()

    def _fail_pending_calls(self) -> None:
        """Stopped or crashed: nothing will run what is still queued."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "call":
                self._run_call(command[1], _raise_stopped, ())


def _raise_stopped() -> None:
    raise EngineDeadError("the engine stopped before running the command")
