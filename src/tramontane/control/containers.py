"""The container engine, behind one wrapper: Podman with the crun OCI runtime.

Every effect the platform has on containers and images (run, stop, pause, build,
load, inspect) is a `podman` command started from here, so that tests and other
hosts can swap the binary or the runtime in one place. Podman is daemonless: a
replica's container is the child of the `podman run` process that the local
backend watches, and its output goes straight to the replica's log file
(`--log-driver passthrough`), not through a logging daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import Invalid, Unavailable

# Labels set on every replica container, so an operator (and `reap`) can tell ours apart.
REPLICA_LABEL = "tramontane.replica"
# Names of replica containers: the prefix, then the replica id.
NAME_PREFIX = "tramontane-"

# Podman runs its OCI runtime with RLIMIT_NPROC capped at this, and a container may
# not be granted more than its runtime holds: asking for podman's own default
# (4194304) fails with EPERM wherever the server lacks CAP_SYS_RESOURCE.
_PODMAN_NPROC_CAP = 32768
# What podman itself reads from its environment.
_PODMAN_OWN_ENV = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
        "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF",
    }
)
# Lines of a failed build's output kept in its error.
_BUILD_ERROR_LINES = 20


class ImageError(Invalid):
    """An image that cannot be used: not on this host, or a build that failed."""

    default_code = "invalid_image"


def container_name(replica_id: str) -> str:
    return NAME_PREFIX + replica_id


def _own_rlimits() -> list[str]:
    """`--ulimit` options granting the container the server's own limits (never
    more): an unprivileged podman cannot raise them past its own."""
    options = []
    limits = (("nofile", resource.RLIMIT_NOFILE, None), ("nproc", resource.RLIMIT_NPROC, _PODMAN_NPROC_CAP))
    for name, which, cap in limits:
        soft, hard = resource.getrlimit(which)
        hard = hard if hard != resource.RLIM_INFINITY else (cap or 1 << 20)
        soft = hard if soft == resource.RLIM_INFINITY else soft
        if cap is not None:
            soft, hard = min(soft, cap), min(hard, cap)
        options += ["--ulimit", f"{name}={soft}:{hard}"]
    return options


_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Freezer:
    """A cgroup's freezer: what `podman pause` writes, written directly. A pause
    through podman costs a podman process (~90 ms); this costs a file write, and
    the light-sleep wake is on a waiting request's path. Podman's own view of
    the container stays "running" while it is frozen this way."""

    path: Path
    v2: bool

    def set(self, frozen: bool) -> None:
        if self.v2:
            self.path.write_text("1" if frozen else "0")
        else:
            self.path.write_text("FROZEN" if frozen else "THAWED")


@dataclass(frozen=True)
class RunRequest:
    """One replica container: what `podman run` is told."""

    name: str
    image: str
    host_port: int
    container_port: int
    cpu: float
    memory_mb: int
    env: dict[str, str]
    # None: the image's own entrypoint and command.
    command: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Host files bind-mounted read-only into the container: (host path, container path).
    read_only_files: list[tuple[str, str]] = field(default_factory=list)


class Podman:
    """The `podman` command line, with crun as the OCI runtime."""

    def __init__(self, binary: str = "podman", runtime: str = "crun"):
        self.binary = binary
        self.runtime = runtime

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--runtime", self.runtime, *args]

    def run_argv(self, request: RunRequest) -> list[str]:
        """`podman run` in the foreground: the process lives as long as the
        container and exits with its status."""
        argv = self._argv(
            "run",
            "--rm",
            "--replace",  # a restart of the same replica reuses its name
            "--name", request.name,
            "--pull", "never",  # images come from builds and loads, or a pull at deploy time
            "--log-driver", "passthrough",
            "--stop-signal", "SIGTERM",
            # The engine's cgroups enforce what the scheduler reserved.
            "--memory", f"{request.memory_mb}m",
            "--memory-swap", f"{request.memory_mb}m",
            "--cpus", f"{request.cpu:g}",
            *_own_rlimits(),
            "--publish", f"127.0.0.1:{request.host_port}:{request.container_port}",
        )
        for key, value in sorted(request.labels.items()):
            argv += ["--label", f"{key}={value}"]
        for host_path, container_path in request.read_only_files:
            argv += ["--mount", f"type=bind,src={host_path},dst={container_path},ro=true"]
        # Names only: podman takes each value from its own environment, so that
        # values (secrets) never appear on a command line that `ps` shows. Podman's
        # own variables (PATH, HOME...) go inline: it needs its values of those.
        for key in sorted(request.env):
            argv += ["--env", f"{key}={request.env[key]}" if key in _PODMAN_OWN_ENV else key]
        argv.append(request.image)
        return argv + (request.command or [])

    async def run(self, request: RunRequest, base_env: dict[str, str], log: IO[bytes]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *self.run_argv(request),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**base_env, **{k: v for k, v in request.env.items() if k not in _PODMAN_OWN_ENV}},
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise OSError(f"the container engine ({self.binary}) is not installed") from exc

    async def _call(self, *args: str, timeout_s: float = 60.0) -> tuple[int, str]:
        """Runs one podman command to its end: its status and its output."""
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv(*args),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except FileNotFoundError as exc:
            raise Unavailable(
                f"the container engine ({self.binary}) is not installed", code="no_container_engine"
            ) from exc
        try:
            async with asyncio.timeout(timeout_s):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        return process.returncode or 0, output.decode(errors="replace")

    async def stop(self, name: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; a paused container is thawed so
        that it can act on the SIGTERM. Never raises: the container may be gone."""
        with contextlib.suppress(OSError, TimeoutError, Unavailable):
            await self._call("unpause", name, timeout_s=10)
            await self._call("stop", "--ignore", "--time", str(max(0, round(grace_s))), name, timeout_s=grace_s + 30)

    async def pause(self, name: str) -> None:
        status, output = await self._call("pause", name, timeout_s=10)
        if status != 0:
            raise OSError(f"podman pause failed: {output.strip()}")

    async def unpause(self, name: str) -> None:
        status, output = await self._call("unpause", name, timeout_s=10)
        if status != 0:
            raise OSError(f"podman unpause failed: {output.strip()}")

    def remove_now(self, name: str) -> bool:
        """Kills and removes a container at once (a previous control plane's); True
        when there was one. Synchronous: called while the plane starts."""
        try:
            done = subprocess.run(
                self._argv("rm", "--force", "--time", "0", name), capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def cgroup_path(self, name: str) -> str | None:
        """The container's cgroup, relative to the hierarchy's root. Synchronous:
        run in a worker thread."""
        try:
            done = subprocess.run(
                self._argv("inspect", "--format", "{{.State.CgroupPath}}", name),
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        cgroup = done.stdout.strip().lstrip("/")
        return cgroup if done.returncode == 0 and cgroup else None

    def memory_mb(self, name: str) -> int:
        """What the container's cgroup holds in memory, in MiB (0 when unknown).
        Synchronous: run in a worker thread."""
        cgroup = self.cgroup_path(name)
        if cgroup is None:
            return 0
        v2, v1 = _CGROUP_ROOT / cgroup / "memory.current", _CGROUP_ROOT / "memory" / cgroup / "memory.usage_in_bytes"
        for candidate in (v2, v1):
            with contextlib.suppress(OSError, ValueError):
                return -(-int(candidate.read_text()) // (1024 * 1024))
        return 0

    def freezer(self, name: str) -> Freezer | None:
        """The container's cgroup freezer, when this process may write it (root,
        or a rootless user with a delegated cgroup2 subtree). Synchronous."""
        cgroup = self.cgroup_path(name)
        if cgroup is None:
            return None
        v2_file, v1_file = _CGROUP_ROOT / cgroup / "cgroup.freeze", _CGROUP_ROOT / "freezer" / cgroup / "freezer.state"
        for path, v2 in ((v2_file, True), (v1_file, False)):
            if os.access(path, os.W_OK):
                return Freezer(path, v2)
        return None

    # -- images ----------------------------------------------------------------

    async def image_exists(self, reference: str) -> bool:
        status, _ = await self._call("image", "exists", reference, timeout_s=30)
        return status == 0

    async def pull(self, reference: str, timeout_s: float = 600.0) -> None:
        status, output = await self._call("pull", "--quiet", reference, timeout_s=timeout_s)
        if status != 0:
            raise ImageError(f"cannot pull image '{reference}': {_tail(output)}", param="image")

    async def build(self, context: Path, containerfile: Path, tag: str, timeout_s: float = 1800.0) -> None:
        """Builds `context` with `containerfile` into `tag`; no base image is pulled
        (`--pull never`): bases come from this host's store."""
        status, output = await self._call(
            "build", "--pull=never", "--layers", "--file", str(containerfile), "--tag", tag, str(context),
            timeout_s=timeout_s,
        )
        if status != 0:
            raise ImageError(f"the build of '{tag}' failed:\n{_tail(output)}")

    async def load(self, archive: Path) -> list[str]:
        """Loads an image archive (`podman save`, `docker save`, OCI layout tar);
        returns the references it held."""
        status, output = await self._call("load", "--input", str(archive), timeout_s=600)
        if status != 0:
            raise ImageError(f"cannot load '{archive}': {_tail(output)}")
        return [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Loaded image")]

    async def tag(self, source: str, target: str) -> None:
        status, output = await self._call("tag", source, target)
        if status != 0:
            raise ImageError(f"cannot tag '{source}' as '{target}': {_tail(output)}")


def _tail(output: str) -> str:
    return "\n".join(output.strip().splitlines()[-_BUILD_ERROR_LINES:])


def podman_env() -> dict[str, str]:
    """The environment `podman` itself needs (PATH for conmon and crun, HOME and
    XDG dirs for rootless storage), without the server's own settings."""
    return {k: os.environ[k] for k in _PODMAN_OWN_ENV if k in os.environ}
