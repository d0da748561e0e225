"""Terminals in a sandbox (`sandbox.pty`): a shell on a pseudo-terminal, its
output streamed as it comes, input and size changes sent by the shell's pid.

What the terminal prints is buffered like a command's output: within the
sandbox's output budget, and dropped (counted) past it when nobody reads.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator
from contextlib import aclosing

from .errors import AgentTimeout, InvalidArgument
from .policy import validate_env
from .process import ChannelUser, CommandEvent, process_events

MAX_SIZE = 1000
MAX_INPUT_BYTES = 64 * 1024  # per request; the agent writes what the terminal takes
INPUT_RETRY_S = 0.01
INPUT_TIMEOUT_S = 10.0  # a terminal that takes no input for this long fails the send


def check_size(rows: int, cols: int) -> None:
    if not (1 <= rows <= MAX_SIZE and 1 <= cols <= MAX_SIZE):
        raise InvalidArgument(f"rows and cols must be 1 to {MAX_SIZE}", param="size")


class Terminals:
    def __init__(self, sandbox: ChannelUser):
        self._sandbox = sandbox

    async def stream(
        self,
        *,
        rows: int = 24,
        cols: int = 80,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[CommandEvent, None]:
        """Starts a login shell on a new terminal and yields "start" (its pid), its
        output as "stdout", and "exit". Leaving the iteration early kills the shell."""
        check_size(rows, cols)
        if timeout is not None and timeout <= 0:
            raise InvalidArgument("timeout must be positive (or null for none)", param="timeout")
        envs = envs or {}
        validate_env(envs)
        events = process_events(self._sandbox, "pty_open", rows=rows, cols=cols, cwd=cwd, env=envs, timeout=timeout)
        async with aclosing(events):
            async for event in events:
                yield event

    async def send_input(self, pid: int, data: str | bytes) -> None:
        """Types `data` into the terminal of shell `pid`, waiting while it is full."""
        rest = data.encode() if isinstance(data, str) else data
        if len(rest) > MAX_INPUT_BYTES:
            raise InvalidArgument(f"input is at most {MAX_INPUT_BYTES} bytes at once", param="data")
        deadline = asyncio.get_running_loop().time() + INPUT_TIMEOUT_S
        async with self._sandbox.use() as channel:
            while rest:
                reply = await channel.call("pty_input", pid=pid, data=base64.b64encode(rest).decode())
                rest = rest[int(reply.get("written", 0)) :]
                if rest:
                    if asyncio.get_running_loop().time() > deadline:
                        raise AgentTimeout(f"the terminal took no input for {INPUT_TIMEOUT_S:g} s")
                    await asyncio.sleep(INPUT_RETRY_S)

    async def resize(self, pid: int, rows: int, cols: int) -> None:
        check_size(rows, cols)
        async with self._sandbox.use() as channel:
            await channel.call("pty_resize", pid=pid, rows=rows, cols=cols)

