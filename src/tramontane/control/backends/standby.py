"""A standby interpreter: a process that has already imported torch and the
server (seconds of a model replica's cold start) and waits on its stdin to be
told which model to serve, on which port, with which environment and log.

Nothing runs in it before that: no torch op, so no intra-op thread pool exists
yet, and it is a fresh process (spawned, not forked), so no thread or lock state
is inherited from the control plane. It exits when its stdin closes unused,
e.g. when the control plane that started it goes away.

Variables that a process reads at startup (the interpreter's, the dynamic
loader's, OpenMP's, torch's) cannot be changed once it runs, so a deployment
setting any of them is started cold."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_READ_AT_STARTUP = ("PYTHON", "LD_", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "TORCH", "PYTORCH", "CUDA", "MALLOC")
# A fresh interpreter importing torch competes for the CPU with the replica that
# just took the previous one; it is started once that replica has had its head start.
_REFILL_AFTER_S = 5.0
READY = b"ready\n"
# The interpreter's entry point lives beside the CLI, which it runs: the control
# plane names it and never imports it.
ENTRY_MODULE = "tramontane.cli.standby"


def can_start_warm(env: dict[str, str]) -> bool:
    return not any(name.startswith(_READ_AT_STARTUP) for name in env)


class Standby:
    """Holds at most one standby interpreter for the local backend."""

    def __init__(self, spawn_env: Callable[[], dict[str, str]]):
        self._spawn_env = spawn_env
        self._process: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Task[bool] | None = None
        self._refill: asyncio.TimerHandle | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def ready(self) -> bool:
        """Whether a standby has finished its imports (a start from it is fastest then)."""
        return self._ready is not None and self._ready.done() and not self._ready.cancelled() and self._ready.result()

    async def start(self) -> None:
        """Starts a standby unless one is there already."""
        if self._process is None and not self._closed:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                ENTRY_MODULE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=self._spawn_env(),
                start_new_session=True,
            )
            self._ready = asyncio.create_task(self._wait_ready(self._process))
            self._ready.add_done_callback(self._check_started)

    async def take(self, args: list[str], env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process | None:
        """Hands the standby `tramontane ARGS` to run; None when there is none alive
        (the caller starts the replica cold). Either way a new standby follows."""
        process, ready = self._process, self._ready
        self._process = self._ready = None
        self._schedule_refill()
        if process is None or process.returncode is not None:
            return None
        assert process.stdin is not None and ready is not None
        ready.cancel()
        assignment = {"args": args, "env": env, "log": str(log_path)}
        try:
            process.stdin.write(json.dumps(assignment).encode() + b"\n")
            await process.stdin.drain()
            process.stdin.close()
        except (ConnectionError, OSError):
            await _kill(process)
            return None
        return process

    async def close(self) -> None:
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
        if self._starting is not None:
            await asyncio.wait({self._starting})
        if self._ready is not None:
            self._ready.cancel()
        if self._process is not None:
            await _kill(self._process)
            self._process = None

    def _schedule_refill(self) -> None:
        if self._refill is None:
            self._refill = asyncio.get_running_loop().call_later(_REFILL_AFTER_S, self._refill_now)

    def _refill_now(self) -> None:
        self._refill = None
        self._starting = asyncio.create_task(self.start())

    def _check_started(self, ready: asyncio.Task[bool]) -> None:
        # One that died before it was ready is replaced (after the usual delay).
        if ready is self._ready and not ready.cancelled() and not ready.result():
            log.warning("the standby interpreter exited before it was ready")
            self._process = self._ready = None
            self._schedule_refill()

    @staticmethod
    async def _wait_ready(process: asyncio.subprocess.Process) -> bool:
        assert process.stdout is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            return await process.stdout.readexactly(len(READY)) == READY
        return False


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
