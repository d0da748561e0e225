"""A deployment's recent load: requests, their latency and its replica count, in
fixed time buckets, for charts of the last hour. In memory, per control plane: a
restart starts the history afresh."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

BUCKET_S = 10.0
KEPT_BUCKETS = 360  # an hour


@dataclass
class Bucket:
    start: float  # wall-clock seconds, a multiple of the bucket width
    requests: int = 0
    latency_s: float = 0.0  # summed over the bucket's requests
    max_latency_s: float = 0.0
    replicas: int | None = None  # live replicas, the most sampled in the bucket


class LoadHistory:
    def __init__(
        self, *, bucket_s: float = BUCKET_S, kept: int = KEPT_BUCKETS, clock: Callable[[], float] = time.time
    ):
        self.bucket_s = bucket_s
        self.clock = clock
        self._buckets: deque[Bucket] = deque(maxlen=kept)

    def _current(self) -> Bucket:
        start = self.clock() // self.bucket_s * self.bucket_s
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(Bucket(start))
        return self._buckets[-1]

    def record_request(self, latency_s: float) -> None:
        """One finished request, from its arrival to its response's last byte."""
        bucket = self._current()
        bucket.requests += 1
        bucket.latency_s += latency_s
        bucket.max_latency_s = max(bucket.max_latency_s, latency_s)

    def record_replicas(self, live: int) -> None:
        bucket = self._current()
        bucket.replicas = live if bucket.replicas is None else max(bucket.replicas, live)

    def series(self) -> list[dict[str, float | int | None]]:
        """The buckets oldest first, with the empty ones in between filled in."""
        points: list[dict[str, float | int | None]] = []
        previous: Bucket | None = None
        replicas: int | None = None  # a bucket without a sample kept the count before it
        for bucket in list(self._buckets):
            if previous is not None:
                gap = previous.start + self.bucket_s
                while gap < bucket.start:  # no request and no sample: nothing changed
                    points.append(_point(Bucket(gap), replicas, self.bucket_s))
                    gap += self.bucket_s
            replicas = bucket.replicas if bucket.replicas is not None else replicas
            points.append(_point(bucket, replicas, self.bucket_s))
            previous = bucket
        return points[-(self._buckets.maxlen or len(points)) :]


def _point(bucket: Bucket, replicas: int | None, bucket_s: float) -> dict[str, float | int | None]:
    return {
        "t": int(bucket.start),
        "requests": bucket.requests,
        "requests_per_s": round(bucket.requests / bucket_s, 3),
        "mean_latency_ms": round(bucket.latency_s / bucket.requests * 1000, 1) if bucket.requests else None,
        "max_latency_ms": round(bucket.max_latency_s * 1000, 1) if bucket.requests else None,
        "replicas": replicas,
    }
