"""Sandbox templates and snapshots, tier 1: create-to-first-command from a
custom template against the host's /usr, and pause/resume of a sandbox holding
200 MB of memory.

Creation is measured cold for both (no warm pool: sandboxes of a custom
template are always started on demand), interleaved so that a busy host weighs
on both alike; the pooled `base` figure is printed for reference. Pause writes
the sandbox to disk (its files and command list; tier 1 keeps no memory, see
docs/sandboxes.md) and stops it; resume starts it again and restarts its
commands: the 200 MB process is started again, not reloaded.

The template is built first if needed (minutes, once). Needs root, bubblewrap
and mmdebstrap.

    python benchmarks/sandbox_templates.py [--template tests/sandbox/templates/small.toml]
                                           [--store DIR] [--iterations 30] [--pauses 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from percentiles import summary
from sandbox_timing import HOLDER, first_command

from tramontane.sandbox import ManagerConfig, SandboxManager, SandboxSpec
from tramontane.sandbox.templates import load

async def creation(manager: SandboxManager, template_id: str, iterations: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"base": [], "template": []}
    for template in ("base", template_id):
        await first_command(manager, template)  # page cache and first-use costs off the figures
    for _ in range(iterations):
        timings["base"].append(await first_command(manager, "base"))
        timings["template"].append(await first_command(manager, template_id))
    return timings


async def pause_resume(manager: SandboxManager, template: str, pauses: int) -> tuple[list[float], list[float]]:
    sandbox = await manager.create(SandboxSpec(template=template, timeout_s=3600))
    paused, resumed = [], []
    try:
        for _ in range(pauses):
            await sandbox.commands.start(HOLDER)
            while sandbox.usage().memory_bytes < 200 << 20:
                await asyncio.sleep(0.05)
            started = time.perf_counter()
            await manager.pause(sandbox.id)
            paused.append(time.perf_counter() - started)
            started = time.perf_counter()
            await manager.resume(sandbox.id)
            resumed.append(time.perf_counter() - started)
            await sandbox.commands.kill_all()  # the restarted holder: the next round starts its own
    finally:
        await manager.kill(sandbox.id)
    return paused, resumed


async def main(spec_path: Path, store: str | None, iterations: int, pauses: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        config = ManagerConfig(
            pool_size=0, microvm_pool_size=0, templates=frozenset({"base"}), state_dir=state, templates_dir=store
        )
        manager = SandboxManager(config)
        await manager.start()
        try:
            started = time.perf_counter()
            template, cached = await manager.templates.build(load(spec_path))
            built = "cached" if cached else f"built in {time.perf_counter() - started:.0f} s"
            print(f"template {template.name} ({template.id}): {built}, {template.size_bytes / 2**20:.0f} MiB")
            timings = await creation(manager, template.id, iterations)
            base, custom = (statistics.median(t) for t in timings.values())
            print(f"create-to-first-command, cold, host /usr:  {summary(timings['base'], 'ms', 1000)}")
            print(f"create-to-first-command, cold, template:   {summary(timings['template'], 'ms', 1000)}")
            print(f"template / base (medians): {custom / base:.2f}x")
            paused, resumed = await pause_resume(manager, template.id, pauses)
            print(f"pause to disk, 200 MB held:  {summary(paused, 'ms', 1000)}")
            print(f"resume from disk:            {summary(resumed, 'ms', 1000)}")
        finally:
            await manager.shutdown()
    pooled = SandboxManager(
        ManagerConfig(pool_size=2, microvm_pool_size=0, templates=frozenset({"base"}), default_template="base")
    )
    await pooled.start()
    try:
        samples = []
        for _ in range(iterations):
            while pooled.stats()["pooled"] < 1:
                await asyncio.sleep(0.01)
            samples.append(await first_command(pooled, "base"))
        print(f"create-to-first-command, warm pool, host /usr (reference): {summary(samples, 'ms', 1000)}")
    finally:
        await pooled.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", type=Path, default=Path("tests/sandbox/templates/small.toml"))
    parser.add_argument("--store", help="the template store (default: $TRAMONTANE_HOME/templates)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--pauses", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.template, args.store, args.iterations, args.pauses))
