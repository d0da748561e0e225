"""What a finished evaluation says: per-target aggregates with bootstrap
intervals, paired comparisons of targets on the same items, and the per-item
results as JSONL or CSV."""

from __future__ import annotations

import csv
import io
import json
import statistics
from typing import Any

from ..errors import Invalid
from . import metrics as scoring
from .schemas import Metric
from .stats import bootstrap_mean, paired


def metric_names(metrics: list[Metric]) -> list[str]:
    """Each metric's name in results: its type, numbered when a type repeats."""
    counts: dict[str, int] = {}
    names = []
    for metric in metrics:
        counts[metric.type] = counts.get(metric.type, 0) + 1
    seen: dict[str, int] = {}
    for metric in metrics:
        seen[metric.type] = seen.get(metric.type, 0) + 1
        names.append(metric.type if counts[metric.type] == 1 else f"{metric.type}_{seen[metric.type]}")
    return names


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def target_summary(rows: list[dict[str, Any]], metrics: list[Metric], names: list[str]) -> dict[str, Any]:
    ok = [r for r in rows if not r.get("error")]
    aggregates: dict[str, Any] = {}
    for metric, name in zip(metrics, names, strict=True):
        values = [r["scores"][name] for r in ok if r["scores"].get(name) is not None]
        aggregate = bootstrap_mean(values).as_dict()
        if metric.type in ("bleu", "chrf"):
            pairs = [(r["answer"], r["reference"]) for r in ok if r.get("reference") is not None]
            aggregate["corpus"] = scoring.corpus(metric, [a for a, _ in pairs], [b for _, b in pairs])
        aggregates[name] = aggregate
    latencies = [r["latency_s"] for r in ok]
    energy = [r["energy_wh"] for r in ok if r.get("energy_wh") is not None]
    return {
        "items": len(rows),
        "failed": len(rows) - len(ok),
        "metrics": aggregates,
        "latency_s": {
            "mean": statistics.fmean(latencies) if latencies else None,
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
        },
        "tokens": {
            "prompt": sum(r["prompt_tokens"] for r in ok),
            "completion": sum(r["completion_tokens"] for r in ok),
        },
        "energy_wh": {"total": sum(energy), "per_item": statistics.fmean(energy)} if energy else None,
    }


def compare(
    results: list[dict[str, Any]], labels: list[str], names: list[str], baseline: int, candidate: int, metric: str
) -> dict[str, Any]:
    """The paired comparison of two targets on `metric`, over the items both answered."""
    if metric not in names:
        raise Invalid(f"the evaluation has no metric '{metric}'; it has {', '.join(names)}", param="metric")
    scores: dict[int, dict[int, float]] = {baseline: {}, candidate: {}}
    for row in results:
        value = None if row.get("error") else row["scores"].get(metric)
        if row["target_index"] in scores and value is not None:
            scores[row["target_index"]][row["item_index"]] = value
    common = sorted(set(scores[baseline]) & set(scores[candidate]))
    pairs = [(scores[baseline][i], scores[candidate][i]) for i in common]
    return paired(labels[baseline], labels[candidate], metric, pairs).as_dict()


def summary(results: list[dict[str, Any]], labels: list[str], metrics: list[Metric]) -> dict[str, Any]:
    names = metric_names(metrics)
    targets = {
        label: target_summary([r for r in results if r["target_index"] == index], metrics, names)
        for index, label in enumerate(labels)
    }
    comparisons = [
        compare(results, labels, names, 0, candidate, name)
        for candidate in range(1, len(labels))
        for name in names
    ]
    return {"targets": targets, "comparisons": comparisons}


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A spreadsheet shows text starting with = + - @ as a formula: answers are
    model output, so such text is quoted to stay text."""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def as_jsonl(results: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in results)


def as_csv(results: list[dict[str, Any]], names: list[str]) -> str:
    out = io.StringIO()
    columns = ["item_index", "line", "target", *names, "latency_s", "prompt_tokens", "completion_tokens",
               "energy_wh", "error", "answer", "reference"]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in results:
        cells = {**row, **{name: (row.get("scores") or {}).get(name) for name in names}}
        writer.writerow({key: _cell(value) for key, value in cells.items()})
    return out.getvalue()


def red_team_csv(results: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    columns = ["target", "family", "attack_id", "applicable", "succeeded", "evidence", "refused", "error", "answer"]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in results:
        cells = {**row, "evidence": "; ".join(row.get("evidence") or [])}
        writer.writerow({key: _cell(value) for key, value in cells.items()})
    return out.getvalue()
