"""The control plane's decisions at a scale this machine cannot host: 1,000
simulated nodes and 10,000 deployments, on a manual clock.

Each reconcile tick does what the plane does per tick: `autoscaler.decide` for
every deployment from its load, then, for every replica to add, the scheduler's
`place` against the cluster's totals (as with the Ray backend, where the plane
sees the cluster as one node and Ray picks the machine), and for every replica to
remove, its release. A second step stands in for Ray: it puts each replica the
plane admitted on one machine, first fit, largest replicas first. Nothing runs
and no database is written: this measures the decisions themselves.

Reported:
- decision time: one tick's autoscaler pass over every deployment, and one
  `place` call (median, p95, max, with counts), as the cluster fills;
- placement quality: replicas admitted against the totals but that fit on no
  single machine (they would wait in Ray), CPU/GPU reserved over the cluster's,
  refusals (NoCapacity) and evictions.

    python benchmarks/scale_simulation.py [--nodes 1000] [--deployments 10000] [--ticks 60]
        [--seed 0] [--load-scale 1.0] [--min-idle-s 30]

The load is synthetic: each deployment has a base concurrency (log-normal, many
near zero, a few large), a daily-style swing and noise; 30% of them idle for
most of the run (scale to zero). Ticks are 5 simulated seconds apart.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import time
from dataclasses import dataclass, field

from tramontane.control.autoscaler import Load, ScaleMemory, decide
from tramontane.control.clock import ManualClock
from tramontane.control.errors import NoCapacity
from tramontane.control.scheduler import DEFAULT_MIN_IDLE_S, NodeCapacity, Occupant, place
from tramontane.control.spec import Resources, Scaling

TICK_S = 5.0


@dataclass
class Node:
    cpu: float
    memory_mb: int
    gpus: int
    free_cpu: float = 0.0
    free_memory_mb: int = 0
    free_gpus: int = 0

    def __post_init__(self) -> None:
        self.free_cpu, self.free_memory_mb, self.free_gpus = self.cpu, self.memory_mb, self.gpus

    def fits(self, r: Resources) -> bool:
        return self.free_cpu + 1e-9 >= r.cpu and self.free_memory_mb >= r.memory_mb and self.free_gpus >= r.gpus

    def take(self, r: Resources, sign: int = 1) -> None:
        self.free_cpu -= sign * r.cpu
        self.free_memory_mb -= sign * r.memory_mb
        self.free_gpus -= sign * r.gpus


@dataclass
class Sim:
    name: str
    resources: Resources
    scaling: Scaling
    base: float  # mean concurrency at the swing's middle
    phase: float
    idle: bool
    memory: ScaleMemory = field(default_factory=ScaleMemory)
    replicas: list[str] = field(default_factory=list)
    last_request: float = 0.0


def make_nodes(count: int, rng: random.Random) -> list[Node]:
    """Nine in ten CPU machines (32 cores, 128 GiB), one in ten GPU machines (64
    cores, 512 GiB, 8 GPUs)."""
    return [Node(64, 512 * 1024, 8) if i % 10 == 0 else Node(32, 128 * 1024, 0) for i in range(count)]


def make_deployments(count: int, rng: random.Random) -> list[Sim]:
    made = []
    for i in range(count):
        kind = rng.random()
        if kind < 0.05:  # a model on GPUs
            resources = Resources(cpu=4, memory_mb=32 * 1024, gpus=rng.choice((1, 1, 2)))
            scaling = Scaling(min_replicas=0, max_replicas=4, target_concurrency=16, scale_to_zero_after_s=600)
        elif kind < 0.20:  # a larger service
            resources = Resources(cpu=4, memory_mb=8 * 1024)
            scaling = Scaling(min_replicas=1, max_replicas=8, target_concurrency=8)
        else:  # a small app or API
            resources = Resources(cpu=rng.choice((0.25, 0.5, 1.0)), memory_mb=rng.choice((256, 512, 1024)))
            scaling = Scaling(min_replicas=0, max_replicas=5, target_concurrency=4, scale_to_zero_after_s=300)
        made.append(Sim(f"d{i}", resources, scaling, base=rng.lognormvariate(0.0, 1.2),
                        phase=rng.random() * 2 * math.pi, idle=rng.random() < 0.3))
    return made


def load_of(sim: Sim, now: float, rng: random.Random) -> int:
    if sim.idle and now > 60:
        return 0
    swing = 1.0 + 0.6 * math.sin(now / 120.0 + sim.phase)  # a 12.5-minute "day"
    return max(0, int(rng.gauss(sim.base * swing, math.sqrt(sim.base * swing + 1e-9))))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def simulate() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load-scale", type=float, default=1.0, help="every deployment's load, times this")
    parser.add_argument("--min-idle-s", type=float, default=DEFAULT_MIN_IDLE_S,
                        help="a running replica's minimum idle time before it may be evicted (the plane's setting)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    clock = ManualClock(start=0.0)
    nodes = make_nodes(args.nodes, rng)
    totals = NodeCapacity(cpu=sum(n.cpu for n in nodes), memory_mb=sum(n.memory_mb for n in nodes),
                          gpus=sum(n.gpus for n in nodes))
    sims = make_deployments(args.deployments, rng)
    for sim in sims:
        sim.base *= args.load_scale
    by_name = {s.name: s for s in sims}
    occupants: dict[str, Occupant] = {}
    on_node: dict[str, Node | None] = {}  # replica id -> its machine (None: no machine fits)
    tick_ms: list[float] = []
    place_ms: list[tuple[int, float]] = []  # (occupants then, ms)
    refused = evicted = started = 0
    stranded_peak = 0
    reserved_peak = (0.0, 0.0)
    serial = 0

    def release(replica_id: str) -> None:
        occupant = occupants.pop(replica_id)
        node = on_node.pop(replica_id)
        if node is not None:
            node.take(occupant.resources, -1)

    def machine_for(resources: Resources) -> Node | None:
        return next((n for n in nodes if n.fits(resources)), None)

    for tick in range(args.ticks):
        now = clock.now()
        loads = {s.name: load_of(s, now, rng) for s in sims}
        started_tick = time.perf_counter()
        wanted = {}
        for sim in sims:
            load = loads[sim.name]
            if load:
                sim.last_request = now
            wanted[sim.name] = decide(sim.scaling, len(sim.replicas), Load(load), now - sim.last_request, now,
                                      sim.memory)
        tick_ms.append((time.perf_counter() - started_tick) * 1000)

        # Removals first, then additions, as the plane frees before it places.
        additions = []
        for sim in sims:
            while len(sim.replicas) > wanted[sim.name]:
                release(sim.replicas.pop())
            additions += [sim] * (wanted[sim.name] - len(sim.replicas))
        # The plane only knows "idle" from in-flight counts: replicas of deployments
        # without load, above their minimum, may be evicted.
        for replica_id, occupant in list(occupants.items()):
            sim = by_name[occupant.deployment_id]
            evictable = loads[sim.name] == 0 and len(sim.replicas) > sim.scaling.min_replicas
            occupants[replica_id] = Occupant(replica_id, sim.name, sim.resources, evictable, sim.last_request)
        additions.sort(key=lambda s: (-s.resources.gpus, -s.resources.cpu))
        for sim in additions:
            before = time.perf_counter()
            try:
                victims = place(totals, list(occupants.values()), sim.resources, sim.name, now=now,
                                min_idle_s=args.min_idle_s)
            except NoCapacity:
                place_ms.append((len(occupants), (time.perf_counter() - before) * 1000))
                refused += 1
                continue
            place_ms.append((len(occupants), (time.perf_counter() - before) * 1000))
            for victim in victims:
                owner = by_name[occupants[victim].deployment_id]
                owner.replicas.remove(victim)
                release(victim)
                evicted += 1
            serial += 1
            replica_id = f"r{serial}"
            sim.replicas.append(replica_id)
            occupants[replica_id] = Occupant(replica_id, sim.name, sim.resources, False, now)
            node = machine_for(sim.resources)
            if node is not None:
                node.take(sim.resources)
            on_node[replica_id] = node
            started += 1
        # Stranded replicas retry a machine each tick, as Ray's pending tasks do.
        for replica_id, node in list(on_node.items()):
            if node is None and (fit := machine_for(occupants[replica_id].resources)) is not None:
                fit.take(occupants[replica_id].resources)
                on_node[replica_id] = fit
        stranded = sum(1 for node in on_node.values() if node is None)
        stranded_peak = max(stranded_peak, stranded)
        cpu_used = sum(o.resources.cpu for o in occupants.values()) / totals.cpu
        gpu_used = sum(o.resources.gpus for o in occupants.values()) / max(1, totals.gpus)
        reserved_peak = max(reserved_peak, (cpu_used, gpu_used))
        if tick % 10 == 0 or tick == args.ticks - 1:
            print(f"tick {tick:>3} t={now:>5.0f}s replicas {len(occupants):>6} cpu {cpu_used:5.1%} gpu {gpu_used:5.1%} "
                  f"stranded {stranded:>4} refused {refused:>5} evicted {evicted:>5}", flush=True)
        await clock.advance(TICK_S)

    calls = [ms for _, ms in place_ms]
    print(f"\nload x{args.load_scale:g}; {args.nodes} nodes ({totals.cpu:.0f} CPUs, {totals.memory_mb // 1024} GiB, {totals.gpus} GPUs), "
          f"{args.deployments} deployments, {args.ticks} ticks of {TICK_S:.0f} s, "
          f"minimum idle before eviction {args.min_idle_s:g} s")
    print(f"autoscaler pass over every deployment: p50 {statistics.median(tick_ms):.1f} ms, "
          f"max {max(tick_ms):.1f} ms (n={len(tick_ms)} ticks)")
    if calls:
        busiest = max(n for n, _ in place_ms)
        late = [ms for n, ms in place_ms if n >= 0.9 * busiest]
        print(f"place(): p50 {statistics.median(calls):.2f} ms, p95 {percentile(calls, 95):.2f} ms, "
              f"max {max(calls):.1f} ms (n={len(calls)}); with >= {int(0.9 * busiest)} replicas placed: "
              f"p50 {statistics.median(late):.2f} ms (n={len(late)})")
    print(f"replicas started {started}, refused {refused}, evicted {evicted}; peak reserved: "
          f"cpu {reserved_peak[0]:.1%}, gpu {reserved_peak[1]:.1%}; "
          f"peak admitted but on no machine: {stranded_peak}")


if __name__ == "__main__":
    asyncio.run(simulate())
