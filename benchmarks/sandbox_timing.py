"""Pieces the sandbox benchmarks share: the time from create to a first command's
answer, and a command that holds 200 MB of memory for the pause figures."""

from __future__ import annotations

import time

from tramontane.sandbox import SandboxManager, SandboxSpec

HOLDER = "python3 -c 'b = bytearray(200 << 20); b[::4096] = b\"x\" * len(b[::4096]); import time; time.sleep(3600)'"


async def first_command(manager: SandboxManager, template: str) -> float:
    started = time.perf_counter()
    sandbox = await manager.create(SandboxSpec(template=template))
    await sandbox.commands.run("echo ok")
    elapsed = time.perf_counter() - started
    await manager.kill(sandbox.id)
    return elapsed
