"""A deployment's traffic as the autoscaler and `/metrics` see it: the recent
arrival rate, and request counts by status with a latency histogram."""

from __future__ import annotations

import bisect
from collections import Counter, deque

# Requests per second are averaged over this long: long enough to smooth out
# bursts within a second, short enough to follow a ramp.
RATE_WINDOW_S = 10.0
# Upper bounds of the latency histogram's buckets, in seconds (Prometheus `le`).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class RateMeter:
    """Arrivals per second over the last `window_s`, counted in one-second slots
    on the caller's clock (memory stays bounded whatever the rate)."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self._slots: deque[list[float]] = deque()  # [slot start, count]

    def record(self, now: float) -> None:
        start = float(int(now))
        if self._slots and self._slots[-1][0] == start:
            self._slots[-1][1] += 1
        else:
            self._slots.append([start, 1])
        self._expire(now)

    def rate(self, now: float) -> float:
        self._expire(now)
        return sum(count for _, count in self._slots) / self.window_s

    def _expire(self, now: float) -> None:
        while self._slots and self._slots[0][0] <= now - self.window_s:
            self._slots.popleft()


class RequestStats:
    """Cumulative requests by HTTP status, and their latency (arrival to last
    byte) as histogram counts, for Prometheus."""

    def __init__(self) -> None:
        self.by_status: Counter[int] = Counter()
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # the last: +Inf
        self.latency_sum_s = 0.0

    def observe(self, status: int, latency_s: float) -> None:
        self.by_status[status] += 1
        self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
        self.latency_sum_s += latency_s

    @property
    def count(self) -> int:
        return sum(self.bucket_counts)

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """(`le`, requests at most that slow), as Prometheus histograms count."""
        total, rows = 0, []
        for bound, count in zip([*map(str, LATENCY_BUCKETS_S), "+Inf"], self.bucket_counts, strict=True):
            total += count
            rows.append((bound, total))
        return rows
