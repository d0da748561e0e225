"""Tier-2 templates and snapshots: create-to-first-command of a microVM from a
custom template (its root disk) against today's microVM (the host's /usr over
9p), and pause/resume to disk of a template VM holding 200 MB of memory.

Creation is measured cold for both (no warm pool), interleaved so that a busy
host weighs on both alike. Pause stops the VM and writes its state (memory
included) through QEMU's migration into the snapshot file; resume starts a new
QEMU from that file: the 200 MB process is the same process, not restarted.
Under QEMU's CPU emulation (TCG, where KVM cannot boot the guest) each boot
takes seconds: keep the counts small.

The template is built first if needed (minutes, once). Needs root, QEMU, the
guest image (`python -m tramontane.sandbox.microvm`) and mmdebstrap.

    python benchmarks/microvm_templates.py [--template tests/sandbox/templates/small.toml]
                                           [--store DIR] [--iterations 5] [--pauses 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from percentiles import summary
from sandbox_timing import HOLDER, first_command

from tramontane.sandbox import ManagerConfig, SandboxManager, SandboxSpec
from tramontane.sandbox.policy import Limits
from tramontane.sandbox.templates import load

async def creation(manager: SandboxManager, template: str, iterations: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"microvm": [], template: []}
    for name in timings:
        await first_command(manager, name)  # page cache, the template's disk image: off the figures
    for _ in range(iterations):
        for name in timings:
            timings[name].append(await first_command(manager, name))
    return timings


async def held_rss_mb(sandbox, pid: int) -> int:
    result = await sandbox.commands.run(f"grep VmRSS /proc/{pid}/status || true")
    fields = result.stdout.split()
    return int(fields[1]) // 1024 if len(fields) > 1 else 0


async def pause_resume(
    manager: SandboxManager, template: str, pauses: int
) -> tuple[list[float], list[float], list[int]]:
    limits = Limits(memory_mb=512)
    sandbox = await manager.create(SandboxSpec(template=template, timeout_s=3600, limits=limits))
    paused, resumed, sizes = [], [], []
    try:
        holder_pid = await sandbox.commands.start(HOLDER)
        deadline = time.monotonic() + 300
        while await held_rss_mb(sandbox, holder_pid) < 200:
            assert time.monotonic() < deadline, "the holder did not fill its 200 MB"
            await asyncio.sleep(0.5)
        for _ in range(pauses):
            started = time.perf_counter()
            await manager.pause(sandbox.id)
            paused.append(time.perf_counter() - started)
            snapshot = manager._snapshots[sandbox.id]
            sizes.append(snapshot.archive_bytes)
            started = time.perf_counter()
            await manager.resume(sandbox.id)
            resumed.append(time.perf_counter() - started)
        # The same process, its memory intact: not a restart.
        assert holder_pid in {p.pid for p in await sandbox.commands.list()}
        assert await held_rss_mb(sandbox, holder_pid) >= 200
    finally:
        await manager.kill(sandbox.id)
    return paused, resumed, sizes


async def main(spec_path: Path, store: str | None, iterations: int, pauses: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        config = ManagerConfig(
            pool_size=0, microvm_pool_size=0, microvm_accelerator="auto", state_dir=state, templates_dir=store,
            max_timeout_s=7200,
        )  # fmt: skip
        manager = SandboxManager(config)
        await manager.start()
        try:
            started = time.perf_counter()
            template, cached = await manager.templates.build(load(spec_path))
            built = "cached" if cached else f"built in {time.perf_counter() - started:.0f} s"
            print(f"template {template.name} ({template.id}): {built}, {template.size_bytes / 2**20:.0f} MiB")
            print(f"accelerator: {manager._microvm.accelerator}, load average {os.getloadavg()[0]:.1f}")
            name = f"microvm:{template.id}"
            if iterations:
                timings = await creation(manager, name, iterations)
                plain, custom = (statistics.median(t) for t in timings.values())
                print(f"create-to-first-command, cold, microvm (9p):       {summary(timings['microvm'], 'ms', 1000)}")
                print(f"create-to-first-command, cold, microvm:template: {summary(timings[name], 'ms', 1000)}")
                print(f"template / plain (medians): {custom / plain:.2f}x")
            if pauses:
                paused, resumed, sizes = await pause_resume(manager, name, pauses)
                print(f"pause to disk, 200 MB held: {summary(paused, 'ms', 1000)}")
                print(f"resume from disk:           {summary(resumed, 'ms', 1000)}")
                print(f"snapshot size: {statistics.median(sizes) / 2**20:.0f} MiB (median, n={len(sizes)})")
            print(f"load average after: {os.getloadavg()[0]:.1f}")
        finally:
            await manager.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", type=Path, default=Path("tests/sandbox/templates/small.toml"))
    parser.add_argument("--store", help="the template store (default: $TRAMONTANE_HOME/templates)")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--pauses", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.template, args.store, args.iterations, args.pauses))
