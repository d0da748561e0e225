"""Commands in a sandbox: run to completion, stream, start in the background, list, kill."""

from __future__ import annotations

import signal as signals
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .channel import AgentChannel, OutputBudget, ok_or_raise
from .errors import InvalidArgument, SandboxDied
from .policy import validate_env

DEFAULT_TIMEOUT_S = 60.0
MAX_COLLECTED_OUTPUT = 16 * 1024 * 1024  # per stream, for run(); also charged to the sandbox's budget
MAX_COMMAND_BYTES = 256 * 1024


class ChannelUser(Protocol):
    def use(self) -> AbstractAsyncContextManager[AgentChannel]: ...


@dataclass
class CommandEvent:
    type: Literal["start", "stdout", "stderr", "exit"]
    pid: int | None = None
    data: str | None = None
    exit_code: int | None = None
    error: str | None = None  # "timeout" when the command outlived its timeout


@dataclass
class CommandResult:
    pid: int
    exit_code: int
    stdout: str
    stderr: str
    error: str | None = None
    truncated: bool = False  # output past MAX_COLLECTED_OUTPUT was dropped


@dataclass
class ProcessInfo:
    pid: int
    cmd: str
    cwd: str
    started_at: float


@dataclass
class _Collector:
    """Output of run(), held until the result is built; past MAX_COLLECTED_OUTPUT
    per stream or the sandbox's output budget, the rest is dropped (truncated)."""

    budget: OutputBudget | None
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    truncated: bool = False

    def add(self, kind: str, data: str) -> None:
        size = len(data)
        if self.sizes[kind] + size > MAX_COLLECTED_OUTPUT or (self.budget and not self.budget.take(size)):
            self.truncated = True
            return
        self.sizes[kind] += size
        getattr(self, kind).append(data)

    def release(self) -> None:
        if self.budget is not None:
            self.budget.give(sum(self.sizes.values()))


async def process_events(
    sandbox: ChannelUser, op: str, *, background: bool = False, **params: Any
) -> AsyncGenerator[CommandEvent, None]:
    """Starts a process through the agent's `op` ("exec" for a command, "pty_open"
    for a terminal's shell) and yields its events, ending with "exit". Leaving the
    iteration early kills the process, unless `background`."""
    async with sandbox.use() as channel:
        rid, events = channel.open(op, **params)
        pid: int | None = None
        finished = False
        try:
            await channel.drain()
            # The agent answers at once ("start", or why not); the process's own
            # timeout bounds the rest.
            event = await channel.next_event(events, op)
            while True:
                kind = event.get("ev")
                if kind == "error":
                    ok_or_raise(event)
                if kind == "start":
                    pid = int(event["pid"])
                    yield CommandEvent("start", pid=pid)
                elif kind in ("stdout", "stderr"):
                    yield CommandEvent(kind, pid=pid, data=str(event.get("data", "")))
                elif kind == "exit":
                    finished = True
                    error = _optional_str(event.get("error"))
                    yield CommandEvent("exit", pid=pid, exit_code=int(event["exit_code"]), error=error)
                    return
                event = await events.get()
        finally:
            channel.forget(rid, events)
            if not finished and pid is not None and not background:
                channel.notify("kill", pid=pid, signal=int(signals.SIGKILL))


class Commands:
    def __init__(self, sandbox: ChannelUser):
        self._sandbox = sandbox

    async def stream(
        self,
        cmd: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        background: bool = False,
    ) -> AsyncGenerator[CommandEvent, None]:
        """Starts `cmd` under bash and yields its events, ending with "exit".

        Leaving the iteration early kills the command, unless `background`: then
        it keeps running and only its output is no longer collected.
        """
        if not cmd or len(cmd.encode()) > MAX_COMMAND_BYTES or "\0" in cmd:
            raise InvalidArgument(f"cmd must be 1 to {MAX_COMMAND_BYTES} bytes without NUL", param="cmd")
        if timeout is not None and timeout <= 0:
            raise InvalidArgument("timeout must be positive (or null for none)", param="timeout")
        envs = envs or {}
        validate_env(envs)
        events = process_events(self._sandbox, "exec", background=background, cmd=cmd, cwd=cwd, env=envs, timeout=timeout)
        async with aclosing(events):
            async for event in events:
                yield event

    async def run(
        self,
        cmd: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        on_stdout: Callable[[str], Any] | None = None,
        on_stderr: Callable[[str], Any] | None = None,
    ) -> CommandResult:
        """Runs `cmd` to completion; a non-zero exit code is a result, not an error."""
        collected = _Collector(getattr(self._sandbox, "budget", None))
        try:
            result = await self._collect(cmd, cwd, envs, timeout, on_stdout, on_stderr, collected)
        finally:
            collected.release()
        return result

    async def _collect(
        self,
        cmd: str,
        cwd: str | None,
        envs: dict[str, str] | None,
        timeout: float | None,
        on_stdout: Callable[[str], Any] | None,
        on_stderr: Callable[[str], Any] | None,
        collected: _Collector,
    ) -> CommandResult:
        pid, exit_event = 0, None
        async with aclosing(self.stream(cmd, cwd=cwd, envs=envs, timeout=timeout)) as events:
            async for event in events:
                if event.type == "start":
                    pid = event.pid or 0
                elif event.type in ("stdout", "stderr"):
                    assert event.data is not None
                    collected.add(event.type, event.data)
                    callback = on_stdout if event.type == "stdout" else on_stderr
                    if callback is not None:
                        callback(event.data)
                else:
                    exit_event = event
        assert exit_event is not None and exit_event.exit_code is not None
        return CommandResult(
            pid=pid,
            exit_code=exit_event.exit_code,
            stdout="".join(collected.stdout),
            stderr="".join(collected.stderr),
            error=exit_event.error,
            truncated=collected.truncated,
        )

    async def start(
        self, cmd: str, *, cwd: str | None = None, envs: dict[str, str] | None = None, timeout: float | None = None
    ) -> int:
        """Starts `cmd` in the background and returns its pid; its output is discarded."""
        async with aclosing(self.stream(cmd, cwd=cwd, envs=envs, timeout=timeout, background=True)) as events:
            async for event in events:
                if event.type == "start":
                    assert event.pid is not None
                    return event.pid
        raise SandboxDied("the command did not start")

    async def list(self) -> list[ProcessInfo]:
        async with self._sandbox.use() as channel:
            reply = await channel.call("ps")
        return [
            ProcessInfo(int(p["pid"]), str(p["cmd"]), str(p["cwd"]), float(p["started_at"]))
            for p in reply.get("processes", [])
        ]

    async def kill(self, pid: int, signal: int = signals.SIGKILL) -> bool:
        """Signals a process (and its process group, for a command); False if it was gone."""
        if pid <= 1:
            raise InvalidArgument("pid must be a sandbox process other than its init", param="pid")
        async with self._sandbox.use() as channel:
            reply = await channel.call("kill", pid=pid, signal=signal)
        return bool(reply.get("killed"))

    async def kill_all(self) -> int:
        """SIGKILLs every process of the sandbox but its agent (the code interpreter
        too: its state is lost). Works when a fork bomb has taken every pid."""
        async with self._sandbox.use() as channel:
            reply = await channel.call("killall")
        return int(reply.get("killed", 0))


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)
