"""The Ray actor that holds one replica's process on the node Ray placed it on.

A plain class (the backend wraps it with `ray.remote`), so this module imports
without Ray. Its methods are coroutines: Ray runs them on one event loop in the
actor, so `wait` and `read_output` long-polls run beside `stop`.

If the actor's worker dies (killed, node lost), nothing in it runs any more; a
watchdog process then kills the replica's process group, so that a dead actor
never leaves its replica serving on the node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from ..spec import DeploymentSpec, Kind
from . import secret_files

# Output not yet pulled by the control plane beyond this is dropped, oldest first,
# so that a replica printing faster than the log is pulled cannot fill the node's memory.
_OUTPUT_LIMIT = 4 << 20
_READ_CHUNK = 64 << 10

# Blocks on a pipe whose only writer is the actor; when the actor's process ends,
# for any reason, the read returns and the replica's process group is killed.
_WATCHDOG = (
    "import os, signal, sys\n"
    "sys.stdin.buffer.read()\n"
    "try:\n"
    "    os.killpg(int(sys.argv[1]), signal.SIGKILL)\n"
    "except ProcessLookupError:\n"
    "    pass\n"
)


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ReplicaProcess:
    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_pipe: int | None = None
        self._output = bytearray()
        self._dropped = 0
        self._output_closed = False
        self._output_changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        # The replica's secret files on this node, until its process ends.
        self._files: Path | None = None

    async def start(
        self, replica_id: str, spec: DeploymentSpec, platform_env: dict[str, str], files: dict[str, str] | None = None
    ) -> dict[str, object]:
        """Starts the replica on a free port of this node's address; returns where
        it listens and which node and process it is."""
        import ray

        host = ray.util.get_node_ip_address()
        port = _free_port(host)
        # The argv is built here, not by the control plane: the interpreter that
        # runs a model replica is this node's, not the control plane's machine's.
        argv = [str(port) if arg == "$PORT" else arg for arg in spec.argv()]
        if spec.kind is Kind.MODEL:
            # Our server listens on loopback by default; the control plane is elsewhere.
            argv += ["--host", host]
        # This worker's environment, which carries Ray's CUDA_VISIBLE_DEVICES for the
        # GPUs the actor was given; TRAMONTANE_* settings of the node stay out of user code.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TRAMONTANE_")}
        env = {
            **inherited,
            **spec.plain_env(),
            **platform_env,
            "HOST": host,
            "PORT": str(port),
            "TRAMONTANE_REPLICA_ID": replica_id,
        }
        if files:
            # On this node, as the replica: the control plane's machine may be another.
            self._files = await asyncio.to_thread(secret_files.write, replica_id, files)
            env[secret_files.SECRETS_DIR_ENV] = str(self._files)
        self._process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._start_watchdog(self._process.pid)
        self._reader = asyncio.create_task(self._read(self._process.stdout))
        return {
            "host": host,
            "port": port,
            "pid": self._process.pid,
            "node": ray.get_runtime_context().get_node_id(),
        }

    def _start_watchdog(self, group: int) -> None:
        read_end, self._watchdog_pipe = os.pipe()
        try:
            # Its own session: whatever signals the worker's group must not reach it.
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(group)], stdin=read_end, start_new_session=True
            )
        finally:
            os.close(read_end)

    async def _read(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        try:
            while chunk := await stream.read(_READ_CHUNK):
                self._output += chunk
                if len(self._output) > _OUTPUT_LIMIT:
                    excess = len(self._output) - _OUTPUT_LIMIT
                    del self._output[:excess]
                    self._dropped += excess
                self._output_changed.set()
        finally:
            self._output_closed = True
            self._output_changed.set()

    async def read_output(self) -> bytes | None:
        """The output since the last call, once there is some; None when the
        process's output has ended and all of it was read."""
        while not self._output and not self._output_closed:
            self._output_changed.clear()
            await self._output_changed.wait()
        if not self._output:
            return None
        chunk = bytes(self._output)
        if self._dropped:
            chunk = f"[... {self._dropped} bytes of output dropped ...]\n".encode() + chunk
            self._dropped = 0
        self._output.clear()
        return chunk

    async def wait(self) -> int:
        assert self._process is not None
        status = await self._process.wait()
        self._remove_files()
        return status

    def _remove_files(self) -> None:
        if self._files is not None:
            secret_files.remove_dir(self._files)
            self._files = None

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to the replica's group, SIGKILL after `grace_s`; also after a
        clean exit of the leader, whose children may linger."""
        if self._process is None:
            return
        if self._process.returncode is None:
            _kill_group(self._process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._process.wait()
        _kill_group(self._process.pid, signal.SIGKILL)
        await self._process.wait()
        self._remove_files()
        # The group is gone: retire the watchdog before its pgid could be reused.
        if self._watchdog is not None:
            self._watchdog.kill()
            await asyncio.to_thread(self._watchdog.wait)
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = None


def _free_port(host: str) -> int:
    # As in the local backend: the kernel picks an unused port; losing a race for
    # it shows up as a failed start, and the control plane starts the replica again.
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
