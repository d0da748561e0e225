"""The contract between the control plane and whatever runs replicas.

The plane owns scheduling, health and state; a backend only starts a replica's
process somewhere reachable over HTTP, reports its exit, probes it, calls its
sleep and wake routes, and stops it: the local backend as a process on this
machine, the Ray backend through an actor holding the process on a node of a Ray
cluster, the memory backend (tests) as objects whose behaviour a test sets.
Every side effect the plane has on a replica goes through this contract."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from ..spec import DeploymentSpec, HealthCheck


class ReplicaHandle(Protocol):
    """One running replica process."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def pid_start(self) -> int | None: ...

    @property
    def node(self) -> str:
        """The machine it runs on, as the backend names machines."""
        ...

    async def wait(self) -> int:
        """Returns the exit status once the process has ended."""
        ...

    async def stop(self, grace_s: float) -> None:
        """Asks the replica to stop, then kills it after `grace_s`."""
        ...


@runtime_checkable
class Pausable(Protocol):
    """A handle whose process can be frozen in place: what light sleep needs. A
    backend whose handles are not Pausable gets deep sleep only."""

    async def pause(self) -> None:
        """Freezes the replica's processes: they keep their memory, use no CPU."""
        ...

    async def resume(self) -> None: ...

    def memory_mb(self) -> int:
        """Resident memory of the replica's processes, in MiB."""
        ...


@runtime_checkable
class Measurable(Protocol):
    """A handle that can tell the CPU time its processes used: what scaling on CPU
    needs. Replicas of other backends are scaled on requests only."""

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds used by the replica's processes so far."""
        ...


class Backend(Protocol):
    async def launch(
        self,
        replica_id: str,
        spec: DeploymentSpec,
        log_path: Path,
        platform_env: dict[str, str],
        files: dict[str, str] | None = None,
    ) -> ReplicaHandle:
        """Starts one replica of `spec`, its output appended to `log_path`;
        `platform_env` is set on top of the spec's env. `files` (spec path ->
        content: secrets) are written privately where the replica runs, for it
        alone, and removed when it stops (secret_files.py)."""
        ...

    async def probe(self, handle: ReplicaHandle, check: HealthCheck) -> bool:
        """Whether the replica passes `check` now; never raises."""
        ...

    async def control(self, handle: ReplicaHandle, action: str, token: str) -> None:
        """Calls a model replica's `/control/<action>` (sleep, wake) with its token;
        raises OSError when the replica does not do it."""
        ...

    def adopt(self, replica_id: str, port: int | None, pid: int | None, pid_start: int | None) -> ReplicaHandle | None:
        """A handle on a replica another control plane launched and left running
        (it died, or lost its lease), when this backend can still reach and stop
        it; None when it cannot (the plane then reaps it and launches afresh)."""
        ...

    def reap(self, pid: int, pid_start: int | None) -> bool:
        """Kills a replica left behind by a previous control plane, if it is still
        that process; True when something was killed."""
        ...

    async def close(self) -> None:
        """Releases what the backend itself holds (not the replicas: the plane stops those)."""
        ...


class ChildProcessReplica:
    """The part of `ReplicaHandle` that every replica started as a child process
    of this control plane on this host shares: a command, or the `podman run` of
    a container. A restarted control plane finds it again by its pid and the
    pid's start time."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, pid_start: int | None):
        self._process = process
        self._port = port
        self._pid_start = pid_start

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def pid_start(self) -> int | None:
        return self._pid_start

    @property
    def node(self) -> str:
        return "local"

    async def wait(self) -> int:
        return await self._process.wait()


def open_log(log_path: Path) -> BinaryIO:
    """`log_path` opened to append a newly started process's output on a line of its
    own: a process killed mid-line must not glue its last words to the next one's
    first (the logs API prefixes each line with its replica)."""
    log = log_path.open("a+b")  # writes append whatever the position; reads see the end
    if log.seek(0, os.SEEK_END) > 0:
        log.seek(-1, os.SEEK_END)
        if log.read(1) != b"\n":
            log.write(b"\n")
            log.flush()
    return log
