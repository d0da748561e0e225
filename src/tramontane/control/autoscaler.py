"""The scaling decision for one deployment, kept pure so it is easy to reason about.

Scale up at once to ceil(load / target_concurrency); scale down only after the
lower figure has held for downscale_delay_s; go to zero only after the
deployment has seen no request for scale_to_zero_after_s."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import Scaling


@dataclass
class ScaleMemory:
    """What the decision needs to remember between ticks."""

    # Since when the wanted count has been below the current one (monotonic s).
    lower_since: float | None = None


def decide(scaling: Scaling, current: int, load: int, idle_for_s: float, now: float, memory: ScaleMemory) -> int:
    """The replica count to aim for. `load` is requests in flight plus queued."""
    if load == 0 and scaling.min_replicas == 0:
        if idle_for_s >= scaling.scale_to_zero_after_s:
            memory.lower_since = None
            return 0
        # Idle but not for long enough to go to zero: keep one warm replica at most.
        wanted = min(current, 1)
    else:
        wanted = math.ceil(load / scaling.target_concurrency)
    wanted = max(scaling.min_replicas, min(scaling.max_replicas, wanted))
    if wanted >= current:
        memory.lower_since = None
        return wanted
    if memory.lower_since is None:
        memory.lower_since = now
    if now - memory.lower_since >= scaling.downscale_delay_s:
        memory.lower_since = None
        return wanted
    return current
