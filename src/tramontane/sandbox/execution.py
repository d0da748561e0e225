"""The stateful code interpreter, host side: E2B's `Execution` shape.

The interpreter process (interpreter.py) starts on the first `run_code` and keeps
its globals until it dies; a timeout interrupts the running cell with
KeyboardInterrupt (state kept) and kills the interpreter only if that fails.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from .channel import ok_or_raise
from .errors import InvalidArgument, SandboxError
from .process import ChannelUser

DEFAULT_TIMEOUT_S = 300.0
MAX_CODE_BYTES = 1024 * 1024


@dataclass
class Result:
    text: str | None = None
    html: str | None = None
    png: str | None = None  # base64
    is_main_result: bool = False

    @classmethod
    def parse(cls, raw: Any) -> Result:
        raw = raw if isinstance(raw, dict) else {}

        def text(key: str) -> str | None:
            value = raw.get(key)
            return None if value is None else str(value)

        return cls(text("text"), text("html"), text("png"), bool(raw.get("is_main_result", False)))

    def formats(self) -> list[str]:
        return [name for name in ("text", "html", "png") if getattr(self, name) is not None]


@dataclass
class ExecutionError:
    name: str
    value: str
    traceback: str


@dataclass
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class Execution:
    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None

    @property
    def text(self) -> str | None:
        """The value of the cell's trailing expression, as text."""
        return next((r.text for r in self.results if r.is_main_result), None)


@dataclass
class CodeEvent:
    """One step of a streamed execution: "stdout"/"stderr" carry `data`, "result"
    ends it with the whole `execution`."""

    type: str
    data: str | None = None
    execution: Execution | None = None


def _parse_error(raw: Any) -> ExecutionError | None:
    if not isinstance(raw, dict):
        return None
    return ExecutionError(str(raw.get("name", "")), str(raw.get("value", "")), str(raw.get("traceback", "")))


class CodeInterpreter:
    def __init__(self, sandbox: ChannelUser):
        self._sandbox = sandbox

    async def stream(self, code: str, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> AsyncGenerator[CodeEvent, None]:
        if len(code.encode()) > MAX_CODE_BYTES:
            raise InvalidArgument(f"code is larger than {MAX_CODE_BYTES} bytes", param="code")
        if timeout is not None and timeout <= 0:
            raise InvalidArgument("timeout must be positive (or null for none)", param="timeout")
        logs = Logs()
        async with self._sandbox.use() as channel:
            rid, events = channel.open("code", code=code, timeout=timeout)
            finished = False
            try:
                await channel.drain()
                async for event in events:
                    kind = event.get("ev")
                    if kind in ("stdout", "stderr"):
                        data = str(event.get("data", ""))
                        getattr(logs, kind).append(data)
                        yield CodeEvent(kind, data=data)
                    elif kind == "result":
                        results = event.get("results")
                        count = event.get("execution_count")
                        execution = Execution(
                            results=[Result.parse(r) for r in results] if isinstance(results, list) else [],
                            logs=logs,
                            error=_parse_error(event.get("error")),
                            execution_count=count if isinstance(count, int) else None,
                        )
                        finished = True
                        yield CodeEvent("result", execution=execution)
                    elif kind == "error":
                        ok_or_raise(event)
            finally:
                channel.forget(rid, events)
                if not finished:
                    # Nobody waits for this cell any more: interrupt it, keeping the state.
                    channel.notify("interrupt")

    async def run(self, code: str, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> Execution:
        async with aclosing(self.stream(code, timeout=timeout)) as events:
            async for event in events:
                if event.execution is not None:
                    return event.execution
        raise SandboxError("the interpreter gave no result")
