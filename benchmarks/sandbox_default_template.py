"""The default template against base, tier 1: create-to-first-command of a
sandbox whose request names no template, from the warm pool, when the default
is the bundled "data" template (numpy, pandas, matplotlib) and when it is
"base" (the host's /usr).

Two managers run side by side, one per default, each with its own warm pool;
samples alternate between them, and each is taken once both pools are full
again, so every sample is a pooled start and a busy host weighs on both alike.
A cold start of each (pool empty) is printed for reference.

The data template must be built (`make install`, or `tramontane sandbox
template build data`); its store may lie below root's 0700 home (the default
$TRAMONTANE_HOME), in which case each cold start binds it in a mount namespace
of its own. Needs root and bubblewrap.

    python benchmarks/sandbox_default_template.py [--store DIR] [--iterations 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from percentiles import summary

from tramontane.sandbox import ManagerConfig, SandboxManager, SandboxSpec


async def first_command(manager: SandboxManager) -> float:
    started = time.perf_counter()
    sandbox = await manager.create(SandboxSpec())  # no template: the manager's default
    await sandbox.commands.run("echo ok")
    elapsed = time.perf_counter() - started
    await manager.kill(sandbox.id)
    return elapsed


async def pools_full(managers: list[SandboxManager], size: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(m.stats()["pooled"] < size for m in managers):
        if time.monotonic() > deadline:
            raise RuntimeError("the warm pools did not fill")
        await asyncio.sleep(0.01)


async def main(store: str | None, iterations: int, pool_size: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        common = dict(microvm_pool_size=0, templates_dir=store, state_dir=state)
        data = SandboxManager(ManagerConfig(pool_size=pool_size, default_template="data", **common))  # type: ignore[arg-type]
        base = SandboxManager(ManagerConfig(pool_size=pool_size, default_template="base", **common))  # type: ignore[arg-type]
        cold_data = SandboxManager(ManagerConfig(pool_size=0, default_template="data", **common))  # type: ignore[arg-type]
        cold_base = SandboxManager(ManagerConfig(pool_size=0, default_template="base", **common))  # type: ignore[arg-type]
        managers = [data, base, cold_data, cold_base]
        for manager in managers:
            await manager.start()
        try:
            default = data.default_template.current()
            if default is None:
                raise SystemExit("the data template is not built: tramontane sandbox template build data")
            print(f"default template {default.name} ({default.id}), {default.size_bytes / 2**20:.0f} MiB")
            timings: dict[str, list[float]] = {"data": [], "base": [], "cold data": [], "cold base": []}
            for manager in managers:  # page cache and first-use costs off the figures
                await first_command(manager)
            for _ in range(iterations):
                for name, manager in zip(timings, managers, strict=True):
                    await pools_full([data, base], pool_size)
                    timings[name].append(await first_command(manager))
            for name, samples in timings.items():
                label = name if name.startswith("cold") else f"warm pool, {name}"
                print(f"create-to-first-command, {label:15s} {summary(samples, 'ms', 1000)}")
            ratio = statistics.median(timings["data"]) / statistics.median(timings["base"])
            print(f"default data / default base, warm pool (medians): {ratio:.2f}x")
        finally:
            for manager in managers:
                await manager.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="the template store (default: $TRAMONTANE_HOME/templates)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--pool-size", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.store, args.iterations, args.pool_size))
