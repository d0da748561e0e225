"""The scaling decision for one deployment, kept pure so it is easy to reason about.

Each signal the spec sets gives a replica count: in-flight plus queued requests
over `target_concurrency`, requests per second over `target_requests_per_s`, and
the live replicas' mean CPU use over `target_cpu_percent` (times the count now).
The largest wins. Scale up at once; scale down to the highest count recommended
during the last `downscale_delay_s` (a stabilisation window, as Kubernetes'
HPA does), so a lull or a noisy signal does not make the count flap; go to zero
only after the deployment has seen no request for `scale_to_zero_after_s`."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .spec import Scaling


@dataclass(frozen=True)
class Load:
    """What the deployment carries now."""

    in_flight: int  # requests in flight plus queued
    requests_per_s: float = 0.0
    # Mean CPU use of the running replicas, in percent of the CPUs each reserves;
    # None when not measured (no running replica, or a backend that cannot).
    cpu_percent: float | None = None


@dataclass
class ScaleMemory:
    """The recommendations of the last `downscale_delay_s`, oldest first."""

    recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def reset(self, now: float, count: int) -> None:
        """Forgets the window, as if `count` had been recommended at `now` (a
        manual scale: the count holds for a window before going lower)."""
        self.recommendations.clear()
        self.recommendations.append((now, count))


def wanted_for(scaling: Scaling, current: int, load: Load) -> int:
    """The count each signal asks for, the largest, before bounds and windows."""
    wanted = math.ceil(load.in_flight / scaling.target_concurrency)
    if scaling.target_requests_per_s is not None:
        wanted = max(wanted, math.ceil(load.requests_per_s / scaling.target_requests_per_s))
    if scaling.target_cpu_percent is not None and load.cpu_percent is not None and current > 0:
        # Kubernetes' rule: the count that brings the mean use back to the target.
        wanted = max(wanted, math.ceil(current * load.cpu_percent / scaling.target_cpu_percent))
    return wanted


def decide(
    scaling: Scaling, current: int, load: int | Load, idle_for_s: float, now: float, memory: ScaleMemory
) -> int:
    """The replica count to aim for. `load` is the deployment's load now (an int:
    requests in flight plus queued, the other signals absent)."""
    if isinstance(load, int):
        load = Load(load)
    if not memory.recommendations:
        memory.reset(now, current)
    idle = load.in_flight == 0 and load.requests_per_s == 0
    if idle and scaling.min_replicas == 0:
        if idle_for_s >= scaling.scale_to_zero_after_s:
            memory.reset(now, 0)
            return 0
        # Idle but not for long enough to go to zero: keep one warm replica at most.
        wanted = min(current, 1)
    else:
        wanted = wanted_for(scaling, current, load)
    wanted = max(scaling.min_replicas, min(scaling.max_replicas, wanted))
    window = memory.recommendations
    window.append((now, wanted))
    while window and now - window[0][0] >= scaling.downscale_delay_s and len(window) > 1:
        window.popleft()
    if wanted >= current:
        return wanted
    return min(current, max(count for _, count in window))
