"""Following replica logs (control/logs.py): the tail first, then only complete new
lines from every replica's file, a truncated file read again from its start, and
the end of the stream when the deployment goes."""

from __future__ import annotations

from pathlib import Path

from tramontane.control import logs
from tramontane.control.clock import ManualClock


class Clock(ManualClock):
    """Each sleep lets the test write between two looks."""

    def __init__(self, between) -> None:
        super().__init__()
        self.between = between

    async def sleep(self, seconds: float) -> None:
        self.between()


async def test_follow_reads_the_tail_then_new_complete_lines(tmp_path: Path) -> None:
    first, second = tmp_path / "r1.log", tmp_path / "r2.log"
    first.write_text("one\ntwo\nthree\npart")
    writes = iter(
        [
            lambda: first.write_text("one\ntwo\nthree\npartial line\n"),  # the partial line completed
            lambda: second.write_text("from r2\n"),
            lambda: None,  # nothing new: no batch
            lambda: first.write_text("restarted\n"),  # truncated, then written again
        ]
    )
    alive = [True]

    def between() -> None:
        step = next(writes, None)
        if step is None:
            alive[0] = False
        else:
            step()

    batches = [b async for b in logs.follow(tmp_path, 2, lambda: alive[0], Clock(between), poll_s=0.1)]
    assert batches == [
        ["[r1] two", "[r1] three"],
        ["[r1] partial line"],
        ["[r2] from r2"],
        ["[r1] restarted"],
    ]


def test_tail_over_several_files_keeps_the_last_lines(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("a1\na2\n")
    lines, offsets = logs.tail(tmp_path, 10)
    assert lines == ["[a] a1", "[a] a2"] and offsets == {tmp_path / "a.log": 6}
    assert logs.tail(tmp_path / "missing", 10) == ([], {})


async def test_a_quiet_follow_sends_an_empty_batch_every_keepalive(tmp_path: Path) -> None:
    """Nothing written for a minute: the follower still gets a sign of life every
    15 s (the API turns it into an SSE comment), not silence a proxy would cut."""
    (tmp_path / "r1.log").write_text("old\n")
    clock = ManualClock()
    looks = [0]

    def alive() -> bool:
        looks[0] += 1
        return looks[0] <= 120  # a minute of half-second looks

    async def sleep(seconds: float) -> None:
        clock._now += seconds

    clock.sleep = sleep  # type: ignore[method-assign]
    batches = [b async for b in logs.follow(tmp_path, 10, alive, clock, poll_s=0.5, keepalive_s=15)]
    assert batches == [["[r1] old"], [], [], [], []]
