"""`place`, table-driven: what a new replica evicts to fit on the node, or why it cannot."""

from __future__ import annotations

import pytest

from tramontane.control.errors import NoCapacity
from tramontane.control.scheduler import NodeCapacity, Occupant, place
from tramontane.control.spec import Resources

NODE = NodeCapacity(cpu=4, memory_mb=4000, gpus=1, gpu_memory_mb=80_000, custom={"h100": 1})
SMALL = Resources(cpu=1, memory_mb=1000)
GPU = Resources(cpu=1, memory_mb=1000, gpus=1, gpu_memory_mb=40_000)
# Long after every occupant's last use, so the minimum idle age holds no one back.
NOW = 1000.0


def busy(replica: str, deployment: str, used: float, resources: Resources = SMALL) -> Occupant:
    return Occupant(replica, deployment, resources, evictable=False, last_used=used)


def idle(replica: str, deployment: str, used: float, resources: Resources = SMALL) -> Occupant:
    return Occupant(replica, deployment, resources, evictable=True, last_used=used)


def asleep(replica: str, deployment: str, used: float, held_mb: int) -> Occupant:
    return Occupant(replica, deployment, SMALL, evictable=True, last_used=used, held_memory_mb=held_mb)


@pytest.mark.parametrize(
    ("occupants", "need", "evicted"),
    [
        pytest.param([], SMALL, [], id="an empty node takes it"),
        pytest.param([busy("a", "A", 1), busy("b", "B", 2), busy("c", "C", 3)], SMALL, [], id="exactly fits"),
        pytest.param(
            [idle("a", "A", 5), idle("b", "B", 1), idle("c", "C", 3), busy("d", "D", 0)],
            SMALL,
            ["b"],
            id="evicts the least recently used idle replica",
        ),
        pytest.param(
            [idle("a", "A", 5), idle("b", "B", 1), busy("c", "C", 3), busy("d", "D", 0)],
            Resources(cpu=2, memory_mb=1000),
            ["b", "a"],
            id="evicts as many as it takes, oldest first",
        ),
        pytest.param(
            [idle("own", "X", 0), idle("b", "B", 1), busy("c", "C", 3), busy("d", "D", 0)],
            SMALL,
            ["b"],
            id="never evicts its own deployment's replicas",
        ),
        pytest.param(
            [asleep("s", "S", 0, held_mb=3500), busy("b", "B", 1)],
            SMALL,
            ["s"],
            id="a sleeping replica holds only its memory, and goes first",
        ),
        pytest.param(
            [asleep("s", "S", 0, held_mb=500), busy("b", "B", 1), busy("c", "C", 2)],
            SMALL,
            [],
            id="a sleeping replica's CPU counts as free",
        ),
        pytest.param([idle("g", "G", 0, GPU)], GPU, ["g"], id="a GPU is not shared: the idle one makes way"),
    ],
)
def test_place(occupants: list[Occupant], need: Resources, evicted: list[str]) -> None:
    assert place(NODE, occupants, need, "X", now=NOW) == evicted


@pytest.mark.parametrize(
    ("occupants", "need", "message"),
    [
        pytest.param([], Resources(cpu=8), "the node only has cpu=4", id="larger than the node"),
        pytest.param([], Resources(custom={"a100": 1}), "a100=1", id="a resource the node lacks"),
        pytest.param(
            [busy("a", "A", 0), busy("b", "B", 0), busy("c", "C", 0), busy("d", "D", 0)],
            SMALL,
            "no idle replica",
            id="everything busy",
        ),
        pytest.param(
            [idle("own", "X", 0), busy("b", "B", 0), busy("c", "C", 0), busy("d", "D", 0)],
            SMALL,
            "no idle replica",
            id="only its own replicas are idle",
        ),
        pytest.param([busy("g", "G", 0, GPU)], GPU, "gpus=0", id="the only GPU is busy"),
    ],
)
def test_place_refuses(occupants: list[Occupant], need: Resources, message: str) -> None:
    with pytest.raises(NoCapacity, match=message) as refused:
        place(NODE, occupants, need, "X", now=NOW)
    assert refused.value.retry_after_s == 5


def test_a_replica_used_less_than_the_minimum_idle_age_ago_is_not_evicted() -> None:
    full = [idle("a", "A", 100), idle("b", "B", 90), busy("c", "C", 0), busy("d", "D", 0)]
    # At 115: `b` has been idle 25 s, `a` 15 s; neither reaches 30 s.
    with pytest.raises(NoCapacity, match=r"2 idle for less than 30 s are kept") as refused:
        place(NODE, full, SMALL, "X", now=115, min_idle_s=30)
    assert refused.value.retry_after_s == 5
    # At 120 `b` has been idle exactly the minimum: it goes; `a` still may not.
    assert place(NODE, full, SMALL, "X", now=120, min_idle_s=30) == ["b"]
    with pytest.raises(NoCapacity, match=r"1 idle for less than 30 s"):
        place(NODE, full, Resources(cpu=2, memory_mb=1000), "X", now=120, min_idle_s=30)
    assert place(NODE, full, Resources(cpu=2, memory_mb=1000), "X", now=130, min_idle_s=30) == ["b", "a"]
    # No minimum: whatever is idle may go at once.
    assert place(NODE, full, SMALL, "X", now=100, min_idle_s=0) == ["b"]


def test_a_sleeping_replica_has_no_minimum_idle_age() -> None:
    occupants = [asleep("s", "S", 100, held_mb=3500), busy("b", "B", 100)]
    assert place(NODE, occupants, SMALL, "X", now=101, min_idle_s=30) == ["s"]
