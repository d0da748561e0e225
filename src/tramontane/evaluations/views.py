"""The API's JSON view of an evaluation or red-team job."""

from __future__ import annotations

from typing import Any

from .models import EvaluationJobRow


def _unix(moment: Any) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def job_view(job: EvaluationJobRow, detailed: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": job.id,
        "object": "evaluation",
        "kind": job.kind,
        "name": job.name,
        "status": job.status,
        "targets": job.spec["targets"],
        "dataset": job.spec.get("dataset"),
        "metrics": job.spec.get("metrics"),
        "red_team": job.spec.get("red_team"),
        "completion_args": job.spec.get("completion_args"),
        "total_items": job.total_items,
        "completed_items": job.completed_items,
        "failed_items": job.failed_items,
        "created_at": _unix(job.created_at),
        "started_at": _unix(job.started_at),
        "completed_at": _unix(job.completed_at),
        "metadata": job.job_metadata,
    }
    if detailed:
        view["events"] = list(reversed(job.events))  # newest first
        view["summary"] = job.summary
    return view
