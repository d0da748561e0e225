"""One live sandbox as the host sees it: its state machine, deadlines, and the
entry points to its commands, files and code interpreter."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .cgroups import Usage
from .channel import AgentChannel, OutputBudget
from .errors import Conflict, SandboxDied
from .execution import DEFAULT_TIMEOUT_S as CODE_TIMEOUT_S
from .execution import CodeInterpreter, Execution
from .files import Files
from .launcher import Runtime
from .metrics import Meter
from .policy import SandboxSpec
from .ports import Ports
from .process import Commands
from .terminal import Terminals
from .watch import Watches


class SandboxState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    KILLED = "killed"


@dataclass
class SandboxInfo:
    sandbox_id: str
    template: str
    state: SandboxState
    metadata: dict[str, str]
    started_at: float  # Unix time
    end_at: float  # Unix time the absolute timeout falls at
    cpu: float
    memory_mb: int
    disk_mb: int
    idle_timeout_s: float | None
    warnings: list[str] = field(default_factory=list)


class ManagedSandbox:
    def __init__(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        runtime: Runtime | None,  # None: paused, its state in a snapshot on disk
        max_file_bytes: int,
        warnings: list[str] | None = None,
    ):
        self.id = sandbox_id
        self.warnings = list(warnings or [])
        self.spec = spec
        self.runtime = runtime
        self.state = SandboxState.RUNNING
        self.killed_reason: str | None = None
        self.started_at = time.time()
        self.deadline = time.monotonic() + spec.timeout_s
        self.last_active = time.monotonic()
        self.busy = 0  # operations in flight; a busy sandbox is not idle
        self.commands = Commands(self)
        self.files = Files(self, max_file_bytes)
        self.interpreter = CodeInterpreter(self)
        self.pty = Terminals(self)
        self.ports = Ports(self)
        self.watches = Watches(self)
        self.meter = Meter()
        self._stopping: asyncio.Task[None] | None = None

    # -- state

    @property
    def budget(self) -> OutputBudget:
        """What the server may hold of this sandbox's output."""
        return self.runtime.channel.budget

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def require_running(self) -> None:
        if self.state is SandboxState.PAUSED:
            raise Conflict(f"sandbox {self.id} is paused; resume it first", code="sandbox_paused")
        if self.state is SandboxState.KILLED:
            raise SandboxDied(f"sandbox {self.id} was stopped ({self.killed_reason})")

    @asynccontextmanager
    async def use(self) -> AsyncIterator[AgentChannel]:
        """The agent channel, for one operation that keeps the sandbox from idling."""
        self.require_running()
        self.busy += 1
        self.touch()
        try:
            yield self.runtime.channel
        finally:
            self.busy -= 1
            self.touch()

    def expired(self, now: float) -> str | None:
        """Why the sandbox should be reclaimed now, if it should."""
        if self.runtime is None:
            return None  # a snapshot on disk: its timeout counts again from resume
        if now >= self.deadline:
            return "timeout"
        idle = self.spec.idle_timeout_s
        if (
            idle is not None
            and self.busy == 0
            and self.state is SandboxState.RUNNING
            and now - self.last_active >= idle
        ):
            return "idle"
        return None

    def set_timeout(self, seconds: float) -> None:
        """Moves the absolute deadline to `seconds` from now (shorter or longer)."""
        self.deadline = time.monotonic() + seconds

    async def pause(self) -> None:
        """Freezes every process of the sandbox. Its absolute timeout keeps
        running while paused; the idle timeout does not."""
        self.require_running()
        frozen = await asyncio.to_thread(self.runtime.cgroup.freeze)
        if not frozen:
            await asyncio.to_thread(self.runtime.cgroup.thaw)
            raise Conflict(f"sandbox {self.id} could not be frozen", code="freeze_failed")
        self.state = SandboxState.PAUSED

    async def resume(self) -> None:
        if self.state is not SandboxState.PAUSED:
            raise Conflict(f"sandbox {self.id} is not paused", code="sandbox_not_paused")
        await asyncio.to_thread(self.runtime.cgroup.thaw)
        self.state = SandboxState.RUNNING
        self.touch()

    async def stop(self, reason: str) -> bool:
        """Kills every process of the sandbox. Idempotent: concurrent calls share
        the work, and only the one that started it returns True."""
        initiated = self._stopping is None
        if self._stopping is None:
            self.state = SandboxState.KILLED
            self.killed_reason = reason
            self._stopping = asyncio.ensure_future(self.runtime.stop() if self.runtime else asyncio.sleep(0))
        await asyncio.shield(self._stopping)
        return initiated

    # -- information

    def info(self) -> SandboxInfo:
        limits = self.spec.limits
        return SandboxInfo(
            sandbox_id=self.id,
            template=self.spec.template,
            state=self.state,
            metadata=dict(self.spec.metadata),
            started_at=self.started_at,
            end_at=time.time() + (self.deadline - time.monotonic()),
            cpu=limits.cpu,
            memory_mb=limits.memory_mb,
            disk_mb=limits.workspace_mb,
            idle_timeout_s=self.spec.idle_timeout_s,
            warnings=list(self.warnings),
        )

    def usage(self) -> Usage:
        self.require_running_or_paused()
        if self.runtime is None:
            return Usage(memory_bytes=0, pids=0, oom_kills=0, memory_limit_bytes=0)  # nothing runs
        return self.runtime.cgroup.usage()

    def require_running_or_paused(self) -> None:
        if self.state is SandboxState.KILLED:
            raise SandboxDied(f"sandbox {self.id} was stopped ({self.killed_reason})")

    # -- shortcuts

    async def run_code(self, code: str, *, timeout: float | None = CODE_TIMEOUT_S) -> Execution:
        return await self.interpreter.run(code, timeout=timeout)
