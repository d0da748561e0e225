"""`decide`, table-driven: the replica count the autoscaler aims for, tick by tick."""

from __future__ import annotations

import pytest

from tramontane.control.autoscaler import ScaleMemory, decide
from tramontane.control.spec import Scaling

# Bounds 0..4, 2 requests per replica, down after 30 s lower, zero after 300 s idle.
SCALING = Scaling(
    min_replicas=0, max_replicas=4, target_concurrency=2, downscale_delay_s=30, scale_to_zero_after_s=300
)
ONE_MIN = Scaling(min_replicas=1, max_replicas=4, target_concurrency=2, downscale_delay_s=30)


# Each case: ticks of (current, load, idle_for_s, now) -> wanted; one ScaleMemory
# carries over between the ticks of a case, as between the plane's passes.
@pytest.mark.parametrize(
    ("scaling", "ticks"),
    [
        pytest.param(SCALING, [((0, 1, 0, 0), 1)], id="a request wakes a deployment from zero"),
        pytest.param(SCALING, [((1, 7, 0, 0), 4)], id="scales up at once to ceil(load / target)"),
        pytest.param(SCALING, [((1, 100, 0, 0), 4)], id="never above max_replicas"),
        pytest.param(SCALING, [((2, 4, 0, 0), 2)], id="steady load keeps the count"),
        pytest.param(
            SCALING,
            [((4, 2, 0, 0), 4), ((4, 2, 0, 29.9), 4), ((4, 2, 0, 30), 1)],
            id="scales down only after the lower count held for downscale_delay_s",
        ),
        pytest.param(
            SCALING,
            [((4, 2, 0, 0), 4), ((4, 8, 0, 20), 4), ((4, 2, 0, 40), 4), ((4, 2, 0, 70), 1)],
            id="a burst restarts the downscale delay",
        ),
        pytest.param(
            SCALING,
            [((3, 0, 10, 0), 3), ((3, 0, 40, 30), 1)],
            id="idle but not for long: one warm replica after the delay",
        ),
        pytest.param(SCALING, [((1, 0, 299, 0), 1), ((1, 0, 300, 1), 0)], id="to zero after scale_to_zero_after_s"),
        pytest.param(SCALING, [((0, 0, 5000, 0), 0)], id="stays at zero while idle"),
        pytest.param(ONE_MIN, [((1, 0, 5000, 0), 1)], id="never below min_replicas, never to zero"),
        pytest.param(ONE_MIN, [((0, 0, 0, 0), 1)], id="brought up to min_replicas at once"),
    ],
)
def test_decide(scaling: Scaling, ticks: list[tuple[tuple[int, int, float, float], int]]) -> None:
    memory = ScaleMemory()
    for (current, load, idle_for_s, now), wanted in ticks:
        assert decide(scaling, current, load, idle_for_s, now, memory) == wanted, (current, load, idle_for_s, now)
