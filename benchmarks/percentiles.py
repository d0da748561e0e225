"""How the benchmarks print latency percentiles: always with the sample count, and a
tail percentile only where there are enough samples to hold one (a p99 of 3 samples
is just their maximum, so with fewer than 100 the maximum is printed as such)."""

from __future__ import annotations

import math
import statistics

P99_MIN_SAMPLES = 100


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile: a value that was observed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float], unit: str = "ms", scale: float = 1.0, digits: int = 1) -> str:
    """'p50 X unit  p99 Y unit  (n=N)', or '... max Y ...' under P99_MIN_SAMPLES."""
    n = len(values)
    if n == 0:
        return "no samples"
    p50 = statistics.median(values) * scale
    if n >= P99_MIN_SAMPLES:
        tail = f"p99 {percentile(values, 99) * scale:{digits + 6}.{digits}f} {unit}"
    else:
        tail = f"max {max(values) * scale:{digits + 6}.{digits}f} {unit}"
    return f"p50 {p50:{digits + 6}.{digits}f} {unit}  {tail}  (n={n})"
