"""The comparison as a chart: one group of bars per metric (or attack family),
one bar per target, with its 95% interval as a whisker. Plain SVG, every label
escaped, nothing executable in it."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

from .models import EvaluationJobRow

WIDTH, HEIGHT, MARGIN, LEGEND = 720, 320, 48, 18
COLOURS = ("#2f6db5", "#e07b39", "#3a9a5b", "#b5452f", "#7d5ab5", "#8c8c3a", "#3a8c8c", "#8c3a6d")


def _series(job: EvaluationJobRow) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, float]]]:
    """(groups, targets, {(group, target): {"mean", "ci_low", "ci_high"}}) from the job's summary."""
    summary = job.summary or {}
    targets = list((summary.get("targets") or {}).keys())
    values: dict[tuple[str, str], dict[str, float]] = {}
    groups: list[str] = []
    for target, data in (summary.get("targets") or {}).items():
        entries = data.get("metrics") or {
            family: stats["attack_success_rate"] for family, stats in (data.get("families") or {}).items()
        }
        for group, estimate in entries.items():
            if group not in groups:
                groups.append(group)
            mean = estimate.get("mean") if estimate else None
            if mean is not None and not math.isnan(mean):  # a metric with no value: no bar
                values[(group, target)] = estimate
    return groups, targets, values


def svg(job: EvaluationJobRow) -> str:
    groups, targets, values = _series(job)
    title = "attack success rate" if job.kind == "red_team" else "mean score"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<text x="{MARGIN}" y="16" font-size="13">{escape(job.name or job.id)}: {title}, 95% interval</text>',
    ]
    if not groups:
        parts.append(f'<text x="{MARGIN}" y="{HEIGHT // 2}">No results yet ({escape(job.status)}).</text></svg>')
        return "".join(parts)
    top, bottom = 28 + LEGEND * len(targets), HEIGHT - MARGIN
    plot = bottom - top
    parts.append(f'<line x1="{MARGIN}" y1="{bottom}" x2="{WIDTH - 10}" y2="{bottom}" stroke="#444"/>')
    for tick in (0.0, 0.5, 1.0):
        y = bottom - tick * plot
        parts.append(f'<text x="{MARGIN - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.1f}</text>')
        parts.append(f'<line x1="{MARGIN}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#ddd"/>')
    for t, target in enumerate(targets):
        y = 24 + LEGEND * t
        parts.append(f'<rect x="{MARGIN}" y="{y}" width="10" height="10" fill="{COLOURS[t % len(COLOURS)]}"/>')
        parts.append(f'<text x="{MARGIN + 16}" y="{y + 9}">{escape(target)}</text>')
    group_width = (WIDTH - 10 - MARGIN) / len(groups)
    bar = group_width * 0.8 / max(1, len(targets))
    for g, group in enumerate(groups):
        x0 = MARGIN + g * group_width + group_width * 0.1
        parts.append(f'<text x="{x0 + group_width * 0.4:.1f}" y="{bottom + 16}" text-anchor="middle">'
                     f'{escape(group)}</text>')
        for t, target in enumerate(targets):
            estimate = values.get((group, target))
            if estimate is None:
                continue
            x = x0 + t * bar
            height = max(0.0, min(1.0, estimate["mean"])) * plot
            colour = COLOURS[t % len(COLOURS)]
            parts.append(f'<rect x="{x:.1f}" y="{bottom - height:.1f}" width="{bar * 0.9:.1f}" '
                         f'height="{height:.1f}" fill="{colour}"><title>{escape(target)}: '
                         f'{estimate["mean"]:.3f}</title></rect>')
            low, high = (bottom - max(0.0, min(1.0, estimate[k])) * plot for k in ("ci_low", "ci_high"))
            middle = x + bar * 0.45
            parts.append(f'<line x1="{middle:.1f}" y1="{low:.1f}" x2="{middle:.1f}" y2="{high:.1f}" stroke="#222"/>')
    parts.append("</svg>")
    return "".join(parts)
