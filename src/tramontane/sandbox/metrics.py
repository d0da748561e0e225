"""CPU, memory and disk use per sandbox: for `GET /v1/sandboxes/{id}/metrics`, and
for Prometheus (`SandboxCollector`, registered by the platform on `/metrics`).

CPU and memory come from the sandbox's cgroup on the host (for a microVM: its
QEMU, the guest's memory included); disk from the agent inside, the use of the
sandbox's writable filesystems (/home/user and /tmp). Asking for metrics does not
count as activity: a sandbox polled for its metrics still reaches its idle timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .errors import SandboxError

if TYPE_CHECKING:
    from .manager import SandboxManager
    from .sandbox import ManagedSandbox

logger = logging.getLogger("tramontane.sandbox")

DISK_TIMEOUT_S = 5.0
REFRESH_INTERVAL_S = 15.0


@dataclass
class Disk:
    used_bytes: int
    total_bytes: int


@dataclass
class SandboxMetrics:
    timestamp: float  # Unix time of the sample
    cpu_count: float  # the sandbox's CPU limit, in CPUs
    cpu_used_pct: float  # of its CPU limit, since the previous sample (or its start)
    cpu_usage_seconds: float  # since it started
    memory_bytes: int
    memory_limit_bytes: int
    pids: int
    oom_kills: int
    disk_used_bytes: int | None  # None while paused: its agent cannot answer
    disk_total_bytes: int | None


class Meter:
    """One sandbox's previous CPU sample, and its last known disk use."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last: tuple[float, int] | None = None  # (monotonic time, CPU µs)
        self.disk: Disk | None = None

    def cpu_pct(self, now: float, usage_us: int, cpus: float) -> float:
        since, before = self.last or (self.started, 0)
        self.last = (now, usage_us)
        elapsed_us = (now - since) * 1e6
        if elapsed_us <= 0 or cpus <= 0:
            return 0.0
        return round(min(100.0, 100.0 * (usage_us - before) / (elapsed_us * cpus)), 2)


async def read_disk(sandbox: ManagedSandbox) -> Disk | None:
    """The agent's answer, straight on its channel: not an activity of the sandbox."""
    from .sandbox import SandboxState

    if sandbox.state is not SandboxState.RUNNING:
        return sandbox.meter.disk
    try:
        reply = await sandbox.runtime.channel.call("disk", timeout=DISK_TIMEOUT_S)
        disks = reply["disks"].values()
        sandbox.meter.disk = Disk(sum(int(d["used"]) for d in disks), sum(int(d["total"]) for d in disks))
    except (SandboxError, KeyError, TypeError, ValueError, AttributeError) as exc:
        logger.debug("no disk figures from sandbox %s: %s", sandbox.id, exc)
    return sandbox.meter.disk


async def measure(sandbox: ManagedSandbox) -> SandboxMetrics:
    usage = await asyncio.to_thread(sandbox.usage)
    disk = await read_disk(sandbox)
    cpus = sandbox.spec.limits.cpu
    return SandboxMetrics(
        timestamp=time.time(),
        cpu_count=cpus,
        cpu_used_pct=sandbox.meter.cpu_pct(time.monotonic(), usage.cpu_usage_us, cpus),
        cpu_usage_seconds=usage.cpu_usage_us / 1e6,
        memory_bytes=usage.memory_bytes,
        memory_limit_bytes=usage.memory_limit_bytes,
        pids=usage.pids,
        oom_kills=usage.oom_kills,
        disk_used_bytes=None if disk is None else disk.used_bytes,
        disk_total_bytes=None if disk is None else disk.total_bytes,
    )


class SandboxCollector:
    """Per-sandbox series for a Prometheus registry, labelled with the sandbox, its
    workspace and template. CPU and memory are read at scrape time; disk use is
    the last figure the agent gave, refreshed every REFRESH_INTERVAL_S by `run()`."""

    LABELS = ("sandbox_id", "workspace", "template")

    def __init__(self, manager: SandboxManager):
        self._manager = manager
        self._task: asyncio.Task[None] | None = None

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("tramontane_sandbox_cpu_seconds", "CPU time used by a sandbox", labels=self.LABELS)
        memory = GaugeMetricFamily("tramontane_sandbox_memory_bytes", "Memory a sandbox uses", labels=self.LABELS)
        limit = GaugeMetricFamily(
            "tramontane_sandbox_memory_limit_bytes", "A sandbox's memory limit", labels=self.LABELS
        )
        pids = GaugeMetricFamily("tramontane_sandbox_pids", "Processes in a sandbox", labels=self.LABELS)
        disk = GaugeMetricFamily("tramontane_sandbox_disk_used_bytes", "A sandbox's disk use", labels=self.LABELS)
        disk_total = GaugeMetricFamily(
            "tramontane_sandbox_disk_total_bytes", "A sandbox's disk size", labels=self.LABELS
        )
        for sandbox in self._manager.list():
            labels = [sandbox.id, sandbox.spec.owner or "", sandbox.spec.template]
            try:
                usage = sandbox.usage()
            except (OSError, SandboxError):
                continue  # stopped meanwhile
            cpu.add_metric(labels, usage.cpu_usage_us / 1e6)
            memory.add_metric(labels, usage.memory_bytes)
            limit.add_metric(labels, usage.memory_limit_bytes)
            pids.add_metric(labels, usage.pids)
            if sandbox.meter.disk is not None:
                disk.add_metric(labels, sandbox.meter.disk.used_bytes)
                disk_total.add_metric(labels, sandbox.meter.disk.total_bytes)
        yield from (cpu, memory, limit, pids, disk, disk_total)

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _refresh_loop(self) -> None:
        while True:
            for sandbox in self._manager.list():
                await read_disk(sandbox)
            await asyncio.sleep(REFRESH_INTERVAL_S)
