"""Starting and stopping one sandbox: bwrap, its cgroup, the agent channel.

bwrap is told to block (`--block-fd`) once its namespaces exist and before the
sandbox's PID 1 (the agent itself: `--as-pid-1`) runs anything; the host then moves that process into the
sandbox's cgroup, so every process the sandbox will ever have is born inside it.
The rlimits are set by the agent before it runs anything (the host may lack
CAP_SYS_RESOURCE for prlimit(2), and lowering one's own limits needs nothing).
bwrap runs as a host uid of its own per sandbox, which its user namespace maps
to uid 1000 inside: even an escape lands as an unprivileged user no other
sandbox shares.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from . import bwrap, seccomp
from .cgroups import Cgroup, CgroupTree
from .channel import MAX_LINE_BYTES, AgentChannel, OutputBudget
from .egress import EgressProxy, egress_socket_path
from .errors import SandboxError, Unavailable
from .policy import EgressRule, Limits, MiB

if TYPE_CHECKING:
    from .microvm.qmp import Monitor

logger = logging.getLogger("tramontane.sandbox")

STDERR_TAIL_BYTES = 8192


AGENT_BOOT = (
    f"import json, sys; sys.path.insert(0, {bwrap.GUEST_ROOT!r}); "
    "from guest.agent import main; main(*map(json.loads, sys.argv[1:]))"
)


@lru_cache(maxsize=1)
def _sandbox_files() -> dict[str, bytes]:
    return bwrap.sandbox_files()


@lru_cache(maxsize=1)
def _view_tools() -> tuple[str, str, str]:
    """unshare, mount and setpriv (util-linux), and the empty directory trees are bound at."""
    found = shutil.which("unshare"), shutil.which("mount"), shutil.which("setpriv")
    if None in found:
        raise Unavailable("unshare, mount and setpriv (util-linux) are needed here", code="util_linux_missing")
    os.makedirs(bwrap.TEMPLATE_VIEW, mode=0o755, exist_ok=True)
    return found  # type: ignore[return-value]


def rlimits(limits: Limits) -> dict[int, int]:
    return {
        resource.RLIMIT_NOFILE: limits.nofile,
        # Counted per uid, and the uid is this sandbox's alone: a second pids ceiling.
        resource.RLIMIT_NPROC: limits.pids,
        resource.RLIMIT_FSIZE: max(limits.workspace_mb, limits.tmp_mb) * MiB,
        resource.RLIMIT_CORE: 0,
    }


def agent_command(limits: Limits, egress: bool = False) -> list[str]:
    argv = [bwrap.PYTHON, "-I", "-S", "-c", AGENT_BOOT, json.dumps(rlimits(limits))]
    return argv + [json.dumps(bwrap.EGRESS_SOCKET)] if egress else argv


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _spawn(
    bwrap_path: str,
    group: Cgroup,
    limits: Limits,
    host_uid: int,
    env: dict[str, str],
    egress_socket: str | None,
    rootfs: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Starts bwrap, moves it and the sandbox's PID 1 into `group`, then lets it go on."""
    view = None if rootfs is None or bwrap.searchable_by_all(rootfs) else bwrap.TEMPLATE_VIEW
    root = {} if rootfs is None or view else bwrap.open_template_root(rootfs)
    info_r, info_w = os.pipe2(os.O_CLOEXEC)
    block_r, block_w = os.pipe2(os.O_CLOEXEC)
    fds = bwrap.LaunchFds(
        seccomp.filter_fd(), info_w, block_r, bwrap.open_file_fds(_sandbox_files()), root, rootfs, view
    )
    argv = bwrap.build_argv(bwrap_path, limits, fds, agent_command(limits, egress_socket is not None), egress_socket)
    # As the sandbox's uid, or as root until the template's view is mounted.
    identity = {"user": host_uid, "group": host_uid, "extra_groups": []}
    if view is not None:
        assert rootfs is not None
        argv = bwrap.in_template_view(rootfs, host_uid, *_view_tools()) + argv
        identity = {}
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=fds.all(),
            env=env,
            **identity,  # type: ignore[arg-type]
        )
    finally:
        for fd in fds.all():
            os.close(fd)
    try:
        info = _read_to_end(info_r)
        if not info:
            process.wait()
            assert process.stderr is not None
            message = process.stderr.read(STDERR_TAIL_BYTES).decode(errors="replace").strip()
            raise Unavailable(f"bwrap could not start the sandbox: {message}", code="bwrap_failed")
        init_pid = int(json.loads(info)["child-pid"])
        group.add(process.pid)
        group.add(init_pid)
        os.write(block_w, b"go")
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        os.close(info_r)
        os.close(block_w)
    return process


@dataclass
class Runtime:
    process: subprocess.Popen[bytes]
    cgroup: Cgroup
    channel: AgentChannel
    host_uid: int
    egress: EgressProxy | None = None  # the sandbox's way out, if its policy allows any
    committed_mb: int = 0  # host memory admission counted for it (its cgroup's memory limit)
    rootfs: Path | None = None  # the template tree it runs on; None: the host's /usr
    monitor: Monitor | None = None  # a microVM's QMP connection, where it has one
    stderr_tail: bytearray = field(default_factory=bytearray)
    _stderr_task: asyncio.Task[None] | None = None

    async def _collect_stderr(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(4096):
            self.stderr_tail += chunk
            del self.stderr_tail[:-STDERR_TAIL_BYTES]

    async def stop(self) -> None:
        """Kills everything in the sandbox and releases its cgroup."""
        try:
            await asyncio.to_thread(self.cgroup.kill)
        except (OSError, SandboxError) as exc:
            logger.error("could not empty the cgroup of a sandbox: %s", exc)
        self.channel.close()
        await asyncio.to_thread(self.process.wait)
        if self._stderr_task is not None:
            await self._stderr_task
        try:
            self.cgroup.remove()
        except OSError as exc:
            logger.error("could not remove a sandbox cgroup: %s", exc)
        if self.egress is not None:
            await self.egress.close()
        if self.monitor is not None:
            self.monitor.close()


async def launch(
    *,
    bwrap_path: str,
    tree: CgroupTree,
    name: str,
    limits: Limits,
    host_uid: int,
    env: dict[str, str],
    budget: OutputBudget,
    egress_rules: tuple[EgressRule, ...] = (),
    rootfs: Path | None = None,
) -> Runtime:
    """Starts a sandbox, on the host's /usr or a template's tree (`rootfs`); with
    `egress_rules`, also its egress proxy and the environment that points HTTP
    clients at it."""
    proxy = None
    if egress_rules:
        proxy = EgressProxy(name, egress_socket_path(name), egress_rules)
        await proxy.start(host_uid)
        env = {**env, **bwrap.proxy_env()}
    # Only the platform's own variables reach bwrap, a host process (and, for a
    # template's view, the root helpers before it): a tenant's (the request's envs,
    # a workspace template's env) could be LD_PRELOAD or the like, obeyed there,
    # outside the sandbox. The agent takes them over its channel before it runs anything.
    trusted = bwrap.base_env() | (bwrap.proxy_env() if proxy is not None else {})
    tenant = {key: value for key, value in env.items() if trusted.get(key) != value}
    group = tree.create(name, limits)
    try:
        socket_path = None if proxy is None else str(proxy.path)
        process = await asyncio.to_thread(_spawn, bwrap_path, group, limits, host_uid, trusted, socket_path, rootfs)
    except BaseException:
        await asyncio.to_thread(group.kill)
        group.remove()
        if proxy is not None:
            await proxy.close()
        raise
    runtime = await attach(process, group, host_uid, budget)
    runtime.egress = proxy
    runtime.rootfs = rootfs
    try:
        # Also the sandbox's first answer: bwrap, released from its block-fd, sets up
        # the sandbox's mounts before it starts the agent, so until the agent answers
        # /home/user may not be in place yet (a resume restores files there next).
        await runtime.channel.call("configure", env=tenant)
    except BaseException:
        await runtime.stop()
        raise
    return runtime


async def attach(
    process: subprocess.Popen[bytes], group: Cgroup, host_uid: int, budget: OutputBudget, rekey: bool = False
) -> Runtime:
    """The runtime of a started sandbox whose agent speaks on the process's stdin/stdout;
    what the server holds of its output is charged to `budget`. `rekey`: the agent
    already runs (a microVM resumed from disk), see AgentChannel."""
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), process.stdout)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), process.stdin
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    errors = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(errors), process.stderr)
    channel = AgentChannel(reader, writer, AgentChannel.new_key(), budget, rekey=rekey)
    runtime = Runtime(process, group, channel, host_uid)
    runtime._stderr_task = asyncio.create_task(runtime._collect_stderr(errors))
    return runtime
