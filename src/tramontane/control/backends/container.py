"""Replicas of image deployments as containers on this machine (Podman + crun).

The handle watches the foreground `podman run` process: it exits with the
container's status, so a crash is seen at once, as for a command replica. Light
sleep freezes the container's cgroup (`podman pause`); deep sleep stops and
removes it, and waking from deep sleep runs the image again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

from ..containers import REPLICA_LABEL, Freezer, Podman, RunRequest, container_name, podman_env
from ..spec import DeploymentSpec
from . import secret_files
from .base import ChildProcessReplica, open_log


class ContainerReplica(ChildProcessReplica):
    def __init__(
        self, podman: Podman, name: str, process: asyncio.subprocess.Process, port: int, pid_start: int | None
    ):
        super().__init__(process, port, pid_start)
        self._podman = podman
        self.name = name
        # Found at the first pause; None after that: podman pauses it instead.
        self._freezer: Freezer | None = None
        self._looked_for_freezer = False
        self._frozen = False

    async def pause(self) -> None:
        if not self._looked_for_freezer:
            self._freezer = await asyncio.to_thread(self._podman.freezer, self.name)
            self._looked_for_freezer = True
        if self._freezer is None:
            await self._podman.pause(self.name)
        else:
            self._freezer.set(True)
        self._frozen = True

    async def resume(self) -> None:
        if self._freezer is None:
            await self._podman.unpause(self.name)
        else:
            self._freezer.set(False)
        self._frozen = False

    def memory_mb(self) -> int:
        return self._podman.memory_mb(self.name)

    async def stop(self, grace_s: float) -> None:
        if self._frozen and self._freezer is not None:
            # Thawed first: a frozen process acts on no signal, SIGKILL included.
            with contextlib.suppress(OSError):
                self._freezer.set(False)
        if self._process.returncode is None:
            await self._podman.stop(self.name, grace_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s + 5):
                    await self._process.wait()
        if self._process.returncode is None:
            # podman itself is stuck: kill it, then the container it left.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
            await asyncio.to_thread(self._podman.remove_now, self.name)


async def launch_container(
    podman: Podman,
    replica_id: str,
    spec: DeploymentSpec,
    port: int,
    env: dict[str, str],
    log_path: Path,
    pid_start_of: Callable[[int], int | None],
    files: Path | None = None,
) -> ContainerReplica:
    """Starts the replica's container, its port published on 127.0.0.1:`port`; the
    image gets `env` (the spec's and the platform's, PORT included) and the secret
    files written in `files`, each mounted read-only at its path (a relative one
    under /run/secrets)."""
    assert spec.image is not None, "an image deployment is built before it is launched"
    container_port = spec.container_port or port
    request = RunRequest(
        name=container_name(replica_id),
        image=spec.image,
        host_port=port,
        container_port=container_port,
        cpu=spec.resources.cpu,
        memory_mb=spec.resources.memory_mb,
        env={**env, "PORT": str(container_port)},
        command=["/bin/sh", "-c", spec.command] if spec.command else None,
        labels={REPLICA_LABEL: replica_id},
        read_only_files=_secret_mounts(spec, files),
    )
    if files is not None:
        request.env[secret_files.SECRETS_DIR_ENV] = secret_files.CONTAINER_DIR
    with open_log(log_path) as log:
        process = await podman.run(request, podman_env(), log)
    return ContainerReplica(podman, request.name, process, port, pid_start_of(process.pid))



def _secret_mounts(spec: DeploymentSpec, files: Path | None) -> list[tuple[str, str]]:
    if files is None:
        return []
    mounts = []
    for path in spec.files:
        inside = path if path.startswith("/") else f"{secret_files.CONTAINER_DIR}/{path}"
        mounts.append((str(files / secret_files.relative(path)), inside))
    return mounts
