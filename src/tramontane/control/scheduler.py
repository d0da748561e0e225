"""Placing replicas on the node by their reserved resources.

A replica fits when the node's free CPU, memory, GPUs and GPU memory all cover
its request. When it does not, idle replicas of other deployments are evicted,
least recently used first, until it does; a deployment is never shrunk below its
min_replicas, and a replica with requests in flight is never evicted. A sleeping
replica holds host memory only (what it measured resident when it fell asleep)
and can always be evicted."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import NoCapacity
from .spec import Resources


@dataclass(frozen=True)
class NodeCapacity:
    cpu: float
    memory_mb: int
    gpus: int = 0
    gpu_memory_mb: int = 0

    @classmethod
    def detect(cls) -> NodeCapacity:
        """This machine's CPUs and memory (GPUs are opt-in: pass them explicitly)."""
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return cls(cpu=float(os.cpu_count() or 1), memory_mb=pages // (1024 * 1024))


@dataclass(frozen=True)
class Occupant:
    """A live replica as the scheduler sees it."""

    replica_id: str
    deployment_id: str
    resources: Resources
    # Idle (nothing in flight) and its deployment is above min_replicas, or asleep.
    evictable: bool
    last_used: float
    # Set for a sleeping replica: the only thing it holds.
    held_memory_mb: int | None = None


def _free(capacity: NodeCapacity, occupants: list[Occupant]) -> list[float]:
    free = [float(capacity.cpu), float(capacity.memory_mb), float(capacity.gpus), float(capacity.gpu_memory_mb)]
    for occupant in occupants:
        held = _vector(occupant.resources) if occupant.held_memory_mb is None else (0, occupant.held_memory_mb, 0, 0)
        for i, used in enumerate(held):
            free[i] -= used
    return free


def _vector(resources: Resources) -> tuple[float, float, float, float]:
    return (resources.cpu, resources.memory_mb, resources.gpus, resources.gpu_memory_mb)


def _fits(free: list[float], need: Resources) -> bool:
    # A small tolerance: CPU shares such as 0.1 do not add up exactly in floats.
    return all(f + 1e-9 >= n for f, n in zip(free, _vector(need), strict=True))


def place(capacity: NodeCapacity, occupants: list[Occupant], need: Resources, deployment_id: str) -> list[str]:
    """The replica ids to evict so that `need` fits (often none); raises NoCapacity
    when it cannot fit even after every permitted eviction."""
    if not _fits(_free(capacity, []), need):
        raise NoCapacity(f"a replica needs {_describe(need)} but the node only has {_describe_node(capacity)}")
    remaining = list(occupants)
    candidates = sorted(
        (o for o in occupants if o.evictable and o.deployment_id != deployment_id), key=lambda o: o.last_used
    )
    evicted: list[str] = []
    for victim in [None, *candidates]:
        if victim is not None:
            remaining.remove(victim)
            evicted.append(victim.replica_id)
        if _fits(_free(capacity, remaining), need):
            return evicted
    free = _free(capacity, occupants)
    raise NoCapacity(
        f"no room for a replica needing {_describe(need)}: free on the node is "
        f"cpu={free[0]:g}, memory_mb={free[1]:g}, gpus={free[2]:g}, gpu_memory_mb={free[3]:g}, "
        "and no idle replica of another deployment can be evicted to make room"
    )


def _describe(r: Resources) -> str:
    return f"cpu={r.cpu:g}, memory_mb={r.memory_mb}, gpus={r.gpus}, gpu_memory_mb={r.gpu_memory_mb}"


def _describe_node(c: NodeCapacity) -> str:
    return f"cpu={c.cpu:g}, memory_mb={c.memory_mb}, gpus={c.gpus}, gpu_memory_mb={c.gpu_memory_mb}"
