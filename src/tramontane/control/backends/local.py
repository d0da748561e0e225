"""Replicas as local processes: one process group each, on a free loopback port,
with output captured to a log file per replica.

Model replicas start from a standby interpreter when one is ready (see
standby.py): a process that has already imported torch and the server, the
slow part of a cold start, and waits to be told which model to serve."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

from ..containers import NAME_PREFIX, Podman
from ..spec import DeploymentSpec, Kind, expand_port
from . import secret_files
from .base import ChildProcessReplica, open_log
from .container import ContainerReplica, launch_container
from .http import HttpReplicaCalls
from .standby import Standby, can_start_warm


def free_port() -> int:
    # The kernel picks an unused port; a race with another process binding it
    # before the replica does is possible but shows up as a failed start.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def group_resident_mb(pgid: int) -> int:
    """Resident memory of every process in group `pgid` (a shell and what it
    started, say), in MiB; pages shared between them are counted once per process."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5, pgrp
                total += int((entry / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue  # it exited meanwhile
    return -(-total // (1024 * 1024))


def group_cpu_seconds(pgid: int) -> float:
    """User plus system CPU time of every process in group `pgid`, in seconds
    (with what its waited-for children used)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5, pgrp
                # Fields 14-17: utime, stime, cutime, cstime.
                ticks += sum(int(f) for f in fields[11:15])
        except (OSError, IndexError, ValueError):
            continue  # it exited meanwhile
    return ticks / os.sysconf("SC_CLK_TCK")


class LocalReplica(ChildProcessReplica):
    def __init__(self, process: asyncio.subprocess.Process, port: int):
        super().__init__(process, port, process_start_time(process.pid))

    async def pause(self) -> None:
        _kill_group(self._process.pid, signal.SIGSTOP)

    async def resume(self) -> None:
        _kill_group(self._process.pid, signal.SIGCONT)

    def memory_mb(self) -> int:
        return group_resident_mb(self._process.pid)

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self._process.pid)

    async def stop(self, grace_s: float) -> None:
        if self._process.returncode is None:
            _kill_group(self._process.pid, signal.SIGTERM)
            # A frozen (sleeping) process only acts on the SIGTERM once continued.
            _kill_group(self._process.pid, signal.SIGCONT)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._process.wait()
        # Also after a clean exit of the leader: a child it forked may linger.
        _kill_group(self._process.pid, signal.SIGKILL)
        await self._process.wait()


class AdoptedReplica:
    """A replica process this control plane did not start (a previous leader on
    this host did, and died or lost its lease): not its child, so its exit is
    watched through a pidfd and its status is unknown."""

    def __init__(self, pid: int, pid_start: int, port: int):
        self._pid = pid
        self._pid_start = pid_start
        self._port = port
        self._pidfd = os.pidfd_open(pid)
        self._exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self._exited.done():
            self._exited.set_result(-1)

    host = LocalReplica.host
    node = LocalReplica.node

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def pid_start(self) -> int | None:
        return self._pid_start

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def pause(self) -> None:
        _kill_group(self._pid, signal.SIGSTOP)

    def resume(self) -> None:
        _kill_group(self._pid, signal.SIGCONT)

    def memory_mb(self) -> int:
        return group_resident_mb(self._pid)

    async def stop(self, grace_s: float) -> None:
        if not self._exited.done():
            _kill_group(self._pid, signal.SIGTERM)
            _kill_group(self._pid, signal.SIGCONT)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self.wait()
        _kill_group(self._pid, signal.SIGKILL)
        await self.wait()


def inherited_env() -> dict[str, str]:
    # The server's own TRAMONTANE_* settings (database URL, keys) stay out of
    # user code; the plane passes what a model replica needs in platform_env.
    return {k: v for k, v in os.environ.items() if not k.startswith("TRAMONTANE_")}


class LocalBackend(HttpReplicaCalls):
    """Runs replicas on this machine."""

    def __init__(self, podman: Podman | None = None) -> None:
        self.standby = Standby(inherited_env)
        # Image deployments' containers.
        self.podman = podman or Podman()
        # Tasks removing replicas' secret files once their processes end.
        self._file_watchers: set[asyncio.Task[None]] = set()

    async def launch(
        self,
        replica_id: str,
        spec: DeploymentSpec,
        log_path: Path,
        platform_env: dict[str, str],
        files: dict[str, str] | None = None,
    ) -> LocalReplica | ContainerReplica:
        if not files:
            return await self._launch(replica_id, spec, log_path, platform_env, None)
        directory = await asyncio.to_thread(secret_files.write, replica_id, files)
        try:
            handle = await self._launch(replica_id, spec, log_path, platform_env, directory)
        except BaseException:
            secret_files.remove_dir(directory)
            raise
        self._remove_files_after(handle, [directory])
        return handle

    async def _launch(
        self, replica_id: str, spec: DeploymentSpec, log_path: Path, platform_env: dict[str, str], files: Path | None
    ) -> LocalReplica | ContainerReplica:
        port = free_port()
        own_env = {**spec.plain_env(), **platform_env, "PORT": str(port), "TRAMONTANE_REPLICA_ID": replica_id}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if spec.kind is Kind.IMAGE:
            return await launch_container(
                self.podman, replica_id, spec, port, own_env, log_path, process_start_time, files
            )
        if files is not None:
            own_env[secret_files.SECRETS_DIR_ENV] = str(files)
        elif spec.kind is Kind.MODEL and can_start_warm(spec.env):
            process = await self.standby.take(spec.tramontane_args(port), own_env, log_path)
            if process is not None:
                return LocalReplica(process, port)
        env = {**inherited_env(), **own_env}
        with open_log(log_path) as log:
            process = await asyncio.create_subprocess_exec(
                *expand_port(spec.argv(), port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Its own session and process group: stopping the replica kills
                # whatever it spawned, and a Ctrl-C at the terminal does not reach it.
                start_new_session=True,
            )
        return LocalReplica(process, port)

    def _remove_files_after(
        self, handle: LocalReplica | ContainerReplica | AdoptedReplica, directories: list[Path]
    ) -> None:
        async def watch() -> None:
            with contextlib.suppress(Exception):
                await handle.wait()
            for directory in directories:
                await asyncio.to_thread(secret_files.remove_dir, directory)

        task = asyncio.create_task(watch(), name=f"remove {directories[0].name}")
        self._file_watchers.add(task)
        task.add_done_callback(self._file_watchers.discard)

    async def close(self) -> None:
        await self.standby.close()
        await self.close_calls()

    def adopt(self, replica_id: str, port: int | None, pid: int | None, pid_start: int | None) -> AdoptedReplica | None:
        """The replica's process, when it still runs on this machine as the same
        process (pid and start time) and its port is known; not an image's
        container, which `reap` removes."""
        if pid is None or pid_start is None or port is None or process_start_time(pid) != pid_start:
            return None
        if _container_of(pid) is not None:
            return None  # a container outlives its process: reaped and started afresh
        try:
            adopted = AdoptedReplica(pid, pid_start, port)
        except OSError:  # it exited meanwhile
            return None
        if directories := secret_files.directories_of(replica_id):
            self._remove_files_after(adopted, directories)
        return adopted

    def reap(self, pid: int, pid_start: int | None) -> bool:
        current = process_start_time(pid)
        if current is None or pid_start is None or current != pid_start:
            return False
        container = _container_of(pid)
        replica_id = secret_files.replica_of(pid)
        _kill_group(pid, signal.SIGKILL)
        if replica_id is not None:
            secret_files.remove(replica_id)
        if container is not None:
            # The container outlives its `podman run` process (conmon holds it).
            self.podman.remove_now(container)
        return True


def _container_of(pid: int) -> str | None:
    """The replica container that `pid`, a `podman run` process, started, if it is one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == b"--name" and value.startswith(NAME_PREFIX.encode()):
            return value.decode()
    return None
