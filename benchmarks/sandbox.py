"""Sandbox figures, tier 1 and tier 2 side by side: create-to-first-command
latency and idle density.

Latency is the time from asking for a sandbox to having the output of a first
command (`echo ok`), measured three ways: in-process with the warm pool (the
default), in-process with the pool off (every sandbox started cold: bwrap, the
namespaces, the agent's Python start-up), through the REST API with the SDK
(server in a process of its own, a new client per sandbox, warm pool), and cold
with an egress allow-list (its proxy, socket mount and forwarder).
Density starts N sandboxes at once, checks each answers a command, and reports
what they cost in memory (their cgroups' own accounting, and the host's
MemAvailable before and after). Needs root and bubblewrap.

Tier 2 (template "microvm", a QEMU microVM per sandbox) is measured the same
way, in-process, warm pool and cold boot, with fewer iterations; its density is
the PSS and RSS of each idle VM's QEMU process (guest RAM it touched included).
It needs hardware KVM; `--accel tcg` measures under CPU emulation instead.

    python benchmarks/sandbox.py [--iterations 50] [--concurrent 100]
                                 [--vm-iterations 10] [--vm-concurrent 4] [--accel kvm] [--tier1-only]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from percentiles import summary

from tramontane.sandbox import ManagerConfig, NetworkPolicy, Sandbox, SandboxManager, SandboxSpec, create_router

MiB = 1024 * 1024


def percentiles(samples_ms: list[float]) -> str:
    return summary(samples_ms)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


async def wait_for_pool(manager: SandboxManager, size: int) -> None:
    while manager.stats()["pooled"] < size:
        await asyncio.sleep(0.01)


async def latency(
    iterations: int, pool_size: int, template: str = "base", accel: str = "kvm", allow_out: tuple[str, ...] = ()
) -> list[float]:
    if template == "base":
        config = ManagerConfig(pool_size=pool_size, microvm_pool_size=0, default_template="base")
    else:
        config = ManagerConfig(pool_size=0, microvm_pool_size=pool_size, microvm_accelerator=accel)
    manager = SandboxManager(config)
    await manager.start()
    samples = []
    try:
        for _ in range(iterations):
            await wait_for_pool(manager, pool_size)
            spec = SandboxSpec(template=template, limits=config.default_limits, network=NetworkPolicy(allow_out))
            started = time.perf_counter()
            sandbox = await manager.create(spec)
            result = await sandbox.commands.run("echo ok")
            samples.append((time.perf_counter() - started) * 1000)
            assert result.stdout == "ok\n"
            await manager.kill(sandbox.id)
    finally:
        await manager.shutdown()
    return samples


def serve(port: int, pool_size: int) -> None:
    """The API server, in a process of its own as in production."""
    manager = SandboxManager(ManagerConfig(pool_size=pool_size, microvm_pool_size=0, default_template="base"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await manager.start()
        yield
        await manager.shutdown()

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_router(manager))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def latency_over_http(iterations: int, pool_size: int) -> list[float]:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited: no delayed-ACK stalls
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(port, pool_size), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            Sandbox.list(api_url=url)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    samples = []
    try:
        for _ in range(iterations):
            time.sleep(0.3)  # the pool refills between sandboxes
            started = time.perf_counter()
            sandbox = Sandbox.create(api_url=url)
            output = sandbox.commands.run("echo ok").stdout
            samples.append((time.perf_counter() - started) * 1000)
            assert output == "ok\n"
            sandbox.kill()
            sandbox.close()
    finally:
        server.terminate()
        server.join(30)
    return samples


async def density(count: int) -> None:
    manager = SandboxManager(ManagerConfig(pool_size=0, microvm_pool_size=0, max_sandboxes=count, default_template="base"))
    await manager.start()
    try:
        before = mem_available()
        started = time.perf_counter()
        sandboxes = await asyncio.gather(*(manager.create() for _ in range(count)))
        created_s = time.perf_counter() - started
        results = await asyncio.gather(*(s.commands.run("echo ok") for s in sandboxes))
        alive = sum(r.stdout == "ok\n" for r in results)
        await asyncio.sleep(1)  # let start-up transients settle
        charged = sum(s.usage().memory_bytes for s in sandboxes)
        host = before - mem_available()
        print(f"  {count} sandboxes started at once in {created_s:.2f} s; {alive}/{count} answered a command")
        print(
            f"  memory charged to their cgroups: {charged / MiB:7.1f} MiB total, {charged / count / MiB:5.1f} MiB each"
        )
        print(f"  host MemAvailable drop:          {host / MiB:7.1f} MiB total, {host / count / MiB:5.1f} MiB each")
        started = time.perf_counter()
        await asyncio.gather(*(manager.kill(s.id) for s in sandboxes))
        print(f"  killed all in {time.perf_counter() - started:.2f} s")
    finally:
        await manager.shutdown()


def pss_rss(pid: int) -> tuple[int, int]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Rss"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields["Pss"], fields["Rss"]


async def vm_density(count: int, accel: str) -> None:
    manager = SandboxManager(
        ManagerConfig(pool_size=0, microvm_pool_size=0, microvm_accelerator=accel, max_sandboxes=count)
    )
    await manager.start()
    try:
        spec = SandboxSpec(template="microvm", limits=manager.config.default_limits)
        before = mem_available()
        started = time.perf_counter()
        sandboxes = await asyncio.gather(*(manager.create(spec) for _ in range(count)))
        created_s = time.perf_counter() - started
        results = await asyncio.gather(*(s.commands.run("echo ok") for s in sandboxes))
        alive = sum(r.stdout == "ok\n" for r in results)
        await asyncio.sleep(2)  # let boot transients settle
        sizes = [pss_rss(s.runtime.process.pid) for s in sandboxes]
        pss = sum(p for p, _ in sizes) / count
        rss = sum(r for _, r in sizes) / count
        host = (before - mem_available()) / count
        print(f"  {count} VMs ({spec.limits.memory_mb} MiB + guest kernel each) booted at once in {created_s:.2f} s;"
              f" {alive}/{count} answered a command")  # fmt: skip
        drop = f"MemAvailable drop {host / MiB:6.1f} MiB"
        print(f"  per idle VM: PSS {pss / MiB:6.1f} MiB, RSS {rss / MiB:6.1f} MiB, {drop}")
        print(f"  idle VMs that fit in MemAvailable ({before / MiB / 1024:.1f} GiB) at that PSS: {int(before / pss)}")
    finally:
        await manager.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--pool", type=int, default=4, help="warm pool size for the pooled runs")
    parser.add_argument("--vm-iterations", type=int, default=10)
    parser.add_argument("--vm-concurrent", type=int, default=4)
    parser.add_argument("--accel", choices=("kvm", "tcg"), default="kvm", help="tier 2's accelerator")
    parser.add_argument("--tier1-only", action="store_true", help="skip the microVM figures")
    args = parser.parse_args()
    print("create -> first command output (echo ok), tier 1 (bubblewrap)")
    print(f"  in-process, warm pool:  {percentiles(asyncio.run(latency(args.iterations, args.pool)))}")
    print(f"  in-process, cold start: {percentiles(asyncio.run(latency(args.iterations, 0)))}")
    print(f"  REST API + SDK, warm:   {percentiles(latency_over_http(args.iterations, args.pool))}")
    # An allow-list means a proxy and a socket mount at start: never pooled.
    egress = asyncio.run(latency(args.iterations, 0, allow_out=("example.com:443",)))
    print(f"  in-process, egress allow-list (cold): {percentiles(egress)}")
    print(f"idle density ({args.concurrent} concurrent sandboxes)")
    asyncio.run(density(args.concurrent))
    if args.tier1_only:
        return
    print(f"create -> first command output (echo ok), tier 2 (QEMU microVM, {args.accel})")
    print(
        f"  in-process, warm pool:  {percentiles(asyncio.run(latency(args.vm_iterations, 1, 'microvm', args.accel)))}"
    )
    print(
        f"  in-process, cold boot:  {percentiles(asyncio.run(latency(args.vm_iterations, 0, 'microvm', args.accel)))}"
    )
    print(f"idle density, tier 2 ({args.vm_concurrent} concurrent VMs)")
    asyncio.run(vm_density(args.vm_concurrent, args.accel))


if __name__ == "__main__":
    main()
