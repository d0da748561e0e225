"""Aggregates with bootstrap confidence intervals, and the paired comparison of
two targets on the same items (bootstrap interval of the mean difference, exact
two-sided sign test). numpy only; resampling is seeded, so a report is reproducible."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
ALPHA = 0.05
SEED = 0


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return _json_safe(asdict(self))


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """The mean of `values` and its percentile bootstrap interval."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    means = _resampled_means(data, resamples, seed)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size))


def _resampled_means(data: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    return data[picks].mean(axis=1)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of `wins` against `losses` (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    baseline: str
    candidate: str
    metric: str
    n: int
    baseline_mean: float
    candidate_mean: float
    difference: Estimate  # candidate - baseline, per item
    wins: int
    losses: int
    ties: int
    p_value: float  # exact sign test
    bootstrap_p_value: float  # paired bootstrap, two-sided
    significant: bool

    def as_dict(self) -> dict[str, object]:
        out = _json_safe(asdict(self))
        out["difference"] = self.difference.as_dict()
        return out


def _json_safe(values: dict[str, object]) -> dict[str, object]:
    """NaN (the mean of no values) as None: JSON has no NaN, and an API answer
    holding one could not be encoded."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def paired(baseline: str, candidate: str, metric: str, pairs: Sequence[tuple[float, float]]) -> Paired:
    """Compares the candidate's scores to the baseline's on the same items."""
    base = np.asarray([b for b, _ in pairs], dtype=np.float64)
    cand = np.asarray([c for _, c in pairs], dtype=np.float64)
    diff = cand - base
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    p_value = sign_test(wins, losses)
    if diff.size:
        means = _resampled_means(diff, RESAMPLES, SEED)
        # How often a resample lands on the other side of zero from the observed difference.
        share_below, share_above = float((means <= 0).mean()), float((means >= 0).mean())
        bootstrap_p = min(1.0, 2 * min(share_below, share_above)) if diff.any() else 1.0
    else:
        bootstrap_p = 1.0
    return Paired(
        baseline,
        candidate,
        metric,
        int(diff.size),
        float(base.mean()) if base.size else math.nan,
        float(cand.mean()) if cand.size else math.nan,
        bootstrap_mean(diff),
        wins,
        losses,
        int(diff.size) - wins - losses,
        p_value,
        bootstrap_p,
        p_value < ALPHA,
    )
