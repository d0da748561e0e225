"""Placing replicas on the node by their reserved resources.

A replica fits when the node's free CPU, memory, GPUs, GPU memory and custom
resources all cover its request. When it does not, idle replicas of other
deployments are evicted, least recently used first, until it does; a deployment
is never shrunk below its min_replicas, and a replica with requests in flight is
never evicted. Nor is a running replica used less than `min_idle_s` ago: under
overcommit, evicting whatever is momentarily idle makes bursty deployments take
each other's replicas in turn, each eviction a cold start for someone, so a
placement that only such replicas could make room for is refused (503 with
Retry-After) instead. A sleeping replica holds host memory only (what it
measured resident when it fell asleep) and can always be evicted. With the Ray backend
the "node" is the whole cluster's totals, and Ray then picks the machine each
replica runs on."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import NoCapacity
from .spec import Resources

# How long a running replica must have been idle before it may be evicted to
# make room; the same as the autoscaler's default stabilisation window, so a
# replica the autoscaler would still keep is not taken by another deployment.
DEFAULT_MIN_IDLE_S = 30.0


@dataclass(frozen=True)
class NodeCapacity:
    cpu: float
    memory_mb: int
    gpus: int = 0
    gpu_memory_mb: int = 0
    # Named resources the node (or Ray cluster) offers, matched against
    # `Resources.custom`; this machine alone offers none.
    custom: Mapping[str, float] = field(default_factory=dict)

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


def _amounts(r: Resources | NodeCapacity) -> dict[str, float]:
    return {"cpu": r.cpu, "memory_mb": r.memory_mb, "gpus": r.gpus, "gpu_memory_mb": r.gpu_memory_mb, **r.custom}


def _held(occupant: Occupant) -> dict[str, float]:
    if occupant.held_memory_mb is not None:
        return {"memory_mb": occupant.held_memory_mb}
    return _amounts(occupant.resources)


def _free(capacity: NodeCapacity, occupants: list[Occupant]) -> dict[str, float]:
    free = _amounts(capacity)
    for occupant in occupants:
        for name, used in _held(occupant).items():
            free[name] = free.get(name, 0.0) - used
    return free


def _fits(free: dict[str, float], need: Resources) -> bool:
    # A small tolerance: CPU shares such as 0.1 do not add up exactly in floats.
    return all(free.get(name, 0.0) + 1e-9 >= amount for name, amount in _amounts(need).items())


def place(
    capacity: NodeCapacity,
    occupants: list[Occupant],
    need: Resources,
    deployment_id: str,
    *,
    now: float,
    min_idle_s: float = DEFAULT_MIN_IDLE_S,
) -> list[str]:
    """The replica ids to evict so that `need` fits (often none); raises NoCapacity
    when it cannot fit even after every permitted eviction. `now` is on the same
    clock as the occupants' `last_used`."""
    if not _fits(_free(capacity, []), need):
        raise NoCapacity(
            f"a replica needs {_describe(_amounts(need))} but the node only has {_describe(_free(capacity, []))}"
        )
    free = _free(capacity, occupants)
    if _fits(free, need):
        return []
    others = [o for o in occupants if o.evictable and o.deployment_id != deployment_id]
    candidates = sorted((o for o in others if _idle_enough(o, now, min_idle_s)), key=lambda o: o.last_used)
    # Each eviction gives back what its replica holds: one pass, not a recount per candidate.
    evicted: list[str] = []
    for victim in candidates:
        for name, held in _held(victim).items():
            free[name] = free.get(name, 0.0) + held
        evicted.append(victim.replica_id)
        if _fits(free, need):
            return evicted
    recent = len(others) - len(candidates)
    raise NoCapacity(
        f"no room for a replica needing {_describe(_amounts(need))}: free on the node is "
        f"{_describe(_free(capacity, occupants))}, and no idle replica of another deployment can be evicted "
        "to make room"
        + (f" ({recent} idle for less than {min_idle_s:g} s are kept)" if recent else "")
    )


def _idle_enough(occupant: Occupant, now: float, min_idle_s: float) -> bool:
    # A sleeper was scaled away already: it holds memory only and never has a floor.
    return occupant.held_memory_mb is not None or now - occupant.last_used >= min_idle_s


def _describe(amounts: dict[str, float]) -> str:
    return ", ".join(f"{name}={amount:g}" for name, amount in amounts.items())
