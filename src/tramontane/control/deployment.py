"""A deployment at run time: its spec, wanted replica count, replicas, and the
request accounting the autoscaler and the router share."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from .autoscaler import ScaleMemory
from .history import LoadHistory
from .replica import Replica
from .spec import DeploymentSpec
from .states import LIVE, ReplicaState
from .traffic import RateMeter, RequestStats


@dataclass
class Deployment:
    id: str
    workspace_id: str
    spec: DeploymentSpec
    desired: int
    # When it last saw a request (the plane's clock): how long it has been idle.
    last_request: float
    replicas: dict[str, Replica] = field(default_factory=dict)
    # Requests waiting for a replica (waking from zero, or every replica starting).
    queued: int = 0
    scale_memory: ScaleMemory = field(default_factory=ScaleMemory)
    # Requests, latency and replicas over the last hour, for charts.
    history: LoadHistory = field(default_factory=LoadHistory)
    # Arrivals per second, for the autoscaler; requests by status, for /metrics.
    arrivals: RateMeter = field(default_factory=RateMeter)
    request_stats: RequestStats = field(default_factory=RequestStats)
    deleted: bool = False
    # The revision being served, and the one being rolled out (with its task).
    revision: int = 1
    rolling_out: int | None = None
    rollout_task: asyncio.Task[None] | None = None
    # How many replicas the rollout brings the new revision to; a manual scale
    # during the rollout changes it, and the new revision keeps it.
    rollout_target: int | None = None
    # A change whose image is being checked, pulled or built, before it is a revision.
    preparing: bool = False
    # Why the last rollout failed, until one succeeds.
    rollback_reason: str | None = None
    # Set, then replaced, whenever a replica becomes ready: a broadcast to waiters.
    ready_signal: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.spec.name

    def live(self) -> list[Replica]:
        """Replicas that count towards the wanted number (not those draining away)."""
        return [r for r in self.replicas.values() if r.state in LIVE and not r.draining]

    def sleeping(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state is ReplicaState.SLEEPING and not r.draining]

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas.values())

    def load(self) -> int:
        return self.in_flight() + self.queued

    def pick(self) -> Replica | None:
        """The ready replica with the fewest outstanding requests (ties at random,
        so that equal replicas share the load). During a rollout, the new
        revision's replicas take traffic as each passes its health check, while
        the old ones they replace drain."""
        revisions = {self.revision, self.rolling_out}
        ready = [r for r in self.replicas.values() if r.ready and not r.draining and r.revision in revisions]
        if not ready:
            return None
        return min(ready, key=lambda r: (r.in_flight, random.random()))

    @property
    def status(self) -> str:
        if self.rolling_out is not None:
            return "rolling_out"
        return "rolled_back" if self.rollback_reason else "active"

    def signal_ready(self) -> None:
        self.ready_signal.set()
        self.ready_signal = asyncio.Event()
