"""An in-memory backend: replicas are objects whose health, exits, launches and
sleep a test sets, so the control plane's logic runs without processes, ports
or waiting (with a `ManualClock`). Records what the plane asked of it."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..spec import DeploymentSpec, HealthCheck


@dataclass
class MemoryReplica:
    """A replica's process, as the plane sees it through its handle."""

    replica_id: str
    port: int
    healthy: bool = True
    paused: bool = False
    memory: int = 100  # resident MiB while paused
    cpu: float = 0.0  # CPU seconds used so far; a test moves it on
    refuses: set[str] = field(default_factory=set)  # control actions it fails
    stopped: bool = False
    host: str = "memory"
    node: str = "memory"
    pid: int | None = None
    pid_start: int | None = None

    def __post_init__(self) -> None:
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def exit(self, status: int = 1) -> None:
        """The process ends on its own (a crash, when `status` is not 0)."""
        if not self._exit.done():
            self._exit.set_result(status)

    @property
    def exited(self) -> bool:
        return self._exit.done()

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self, grace_s: float) -> None:
        self.stopped = True
        self.exit(-15)

    async def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False

    def memory_mb(self) -> int:
        return self.memory

    def cpu_seconds(self) -> float:
        return self.cpu


class MemoryBackend:
    """Launches `MemoryReplica`s. `fail_launches` makes the next launches raise
    OSError; `healthy_on_launch` is the health new replicas start with."""

    def __init__(self) -> None:
        self.replicas: dict[str, MemoryReplica] = {}
        self.launched: list[str] = []
        self.adopted: list[str] = []
        self.files: dict[str, dict[str, str]] = {}  # the secret files each launch was given
        self.calls: list[tuple[str, str]] = []  # (replica id, control action)
        self.fail_launches = 0
        self.healthy_on_launch = True
        self.closed = False
        self._ports = itertools.count(20000)

    async def launch(
        self,
        replica_id: str,
        spec: DeploymentSpec,
        log_path: Path,
        platform_env: dict[str, str],
        files: dict[str, str] | None = None,
    ) -> MemoryReplica:
        self.launched.append(replica_id)
        self.files[replica_id] = dict(files or {})
        if self.fail_launches > 0:
            self.fail_launches -= 1
            raise OSError(f"replica {replica_id} could not be launched")
        replica = MemoryReplica(replica_id, next(self._ports), healthy=self.healthy_on_launch)
        self.replicas[replica_id] = replica
        return replica

    async def probe(self, handle: MemoryReplica, check: HealthCheck) -> bool:
        return handle.healthy and not handle.paused and not handle.exited

    async def control(self, handle: MemoryReplica, action: str, token: str) -> None:
        self.calls.append((handle.replica_id, action))
        if action in handle.refuses or handle.exited:
            raise OSError(f"replica {handle.replica_id} would not {action}")

    def adopt(self, replica_id: str, port: int | None, pid: int | None, pid_start: int | None) -> MemoryReplica | None:
        """The replica, when it is still running: planes sharing this backend
        stand for gateways sharing one cluster."""
        replica = self.replicas.get(replica_id)
        if replica is None or replica.exited:
            return None
        self.adopted.append(replica_id)
        return replica

    def reap(self, pid: int, pid_start: int | None) -> bool:
        return False

    async def close(self) -> None:
        self.closed = True
