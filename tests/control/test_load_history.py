"""A deployment's load history: buckets of requests, latency and replicas."""

from tramontane.control.history import LoadHistory


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_requests_and_replicas_fall_into_their_buckets_and_gaps_are_filled():
    clock = Clock()
    history = LoadHistory(bucket_s=10, kept=6, clock=clock)
    history.record_replicas(1)
    history.record_request(0.1)
    history.record_request(0.3)
    clock.now += 30  # two quiet buckets, then one with a second replica
    history.record_replicas(2)
    history.record_request(0.2)
    points = history.series()
    assert [p["t"] for p in points] == [1_000_000, 1_000_010, 1_000_020, 1_000_030]
    assert [p["requests"] for p in points] == [2, 0, 0, 1]
    assert points[0]["mean_latency_ms"] == 200.0 and points[0]["max_latency_ms"] == 300.0
    assert points[0]["requests_per_s"] == 0.2
    assert points[1]["mean_latency_ms"] is None
    assert [p["replicas"] for p in points] == [1, 1, 1, 2]  # unchanged while unsampled


def test_the_most_replicas_sampled_in_a_bucket_count_and_old_buckets_go():
    clock = Clock()
    history = LoadHistory(bucket_s=10, kept=3, clock=clock)
    for live in (0, 3, 1):
        history.record_replicas(live)
    assert history.series()[-1]["replicas"] == 3
    for _ in range(5):
        clock.now += 10
        history.record_replicas(1)
    points = history.series()
    assert len(points) == 3 and points[0]["t"] == 1_000_030
    assert LoadHistory().series() == []
