"""The control plane's time: read and slept on through one `Clock`, so tests move
it by hand (`ManualClock`) instead of waiting for it.

Monotonic seconds: only differences mean anything."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """Time that passes only in `advance`: every sleeper whose deadline it reaches
    wakes, in deadline order, and the loop runs until nothing more is ready."""

    def __init__(self, start: float = 1000.0):
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), woken))
        await woken

    async def advance(self, seconds: float) -> None:
        """Moves time on by `seconds`, one due sleeper at a time, letting each
        woken task run before the next deadline is reached."""
        until = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= until:
            deadline, _, woken = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not woken.done():
                woken.set_result(None)
                await settle()
        self._now = until
        await settle()

    @property
    def sleepers(self) -> int:
        return sum(not woken.done() for _, _, woken in self._sleepers)


async def settle(rounds: int = 50) -> None:
    """Lets every task that can run do so, for at most `rounds` passes of the loop."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def within(clock: Clock, waiter: asyncio.Future[object], timeout_s: float) -> bool:
    """Whether `waiter` is done within `timeout_s` of `clock`. `waiter` is left
    running either way: the caller owns it."""
    timer = asyncio.ensure_future(clock.sleep(timeout_s))
    try:
        await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    return waiter.done()


async def wait_for(clock: Clock, awaitable: Awaitable[object], timeout_s: float) -> bool:
    """Awaits `awaitable` for at most `timeout_s` of `clock`; True when it finished
    (it is cancelled otherwise)."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await within(clock, task, timeout_s)
    finally:
        task.cancel()
