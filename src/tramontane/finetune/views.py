"""The API's JSON views of fine-tuning files, jobs and batch jobs, in Mistral's
and OpenAI's shapes. Services return rows; the route modules build these views,
so a response's shape lives in one place, apart from the status machines."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .batch import CANCELLATION_REQUESTED, CANCELLED, FAILED, QUEUED, RUNNING, SUCCESS
from .jobs import unix
from .models import BatchJobRow, FileRow, FineTuningJobRow
from .openai_jobs import OPENAI_STATUS as _JOB_STATUS
from .openai_jobs import BASE_LEARNING_RATE

# A batch's window: OpenAI accepts only this one.
WINDOW = timedelta(hours=24)

_BATCH_STATUS = {
    QUEUED: "validating",
    RUNNING: "in_progress",
    SUCCESS: "completed",
    FAILED: "failed",
    CANCELLATION_REQUESTED: "cancelling",
    CANCELLED: "cancelled",
}


def file_view(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "sample_type": row.sample_type,
        "source": row.source,
        "num_lines": row.num_lines,
        "mimetype": row.mimetype,
        "deleted": False,  # Mistral's retrieve requires it
        "status": "processed",  # OpenAI's
        "expires_at": None,
    }


def job_view(job: FineTuningJobRow, detailed: bool = True) -> dict[str, Any]:
    """The job in the shape of the API it was created through."""
    if job.api == "openai":
        return openai_job_view(job)
    view = {
        "id": job.id,
        "object": "job",
        "job_type": job.job_type,
        "auto_start": job.auto_start,
        "model": job.model,
        "status": job.status,
        "created_at": unix(job.created_at),
        "modified_at": unix(job.modified_at),
        "training_files": [f["file_id"] for f in job.training_files],
        "validation_files": job.validation_files,
        "hyperparameters": job.hyperparameters,
        "fine_tuned_model": job.fine_tuned_model,
        "suffix": job.suffix,
        "integrations": [],
        "trained_tokens": job.trained_tokens,
        "metadata": None,
    }
    if job.resources:
        view["resources"] = job.resources
    if job.job_type == "classifier":
        view["classifier_targets"] = job.classifier_targets or []
    if detailed:
        view["events"] = list(reversed(job.events))  # newest first, as Mistral lists them
        view["checkpoints"] = list(reversed(job.checkpoints))
    return view


def openai_job_view(job: FineTuningJobRow) -> dict[str, Any]:
    status = _JOB_STATUS[job.status]
    params = job.hyperparameters
    failure = next((e for e in reversed(job.events) if e["data"].get("status") in ("FAILED", "FAILED_VALIDATION")),
                   None)
    epochs = params.get("epochs")
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "model": job.model,
        "created_at": unix(job.created_at),
        "finished_at": unix(job.modified_at) if status in ("succeeded", "failed", "cancelled") else None,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.workspace_id,
        "result_files": [],
        "status": status,
        "validation_file": job.validation_files[0] if job.validation_files else None,
        "training_file": job.training_files[0]["file_id"],
        "hyperparameters": {
            "n_epochs": round(epochs) if epochs else "auto",
            "batch_size": "auto",
            "learning_rate_multiplier": params.get("learning_rate", BASE_LEARNING_RATE) / BASE_LEARNING_RATE,
        },
        "trained_tokens": job.trained_tokens,
        "error": _error(failure) if status == "failed" else None,
        "seed": 0,
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
        "method": {"type": "supervised"},
        "suffix": job.suffix,
    }


def _error(event: dict[str, Any] | None) -> dict[str, Any]:
    data = (event or {}).get("data", {})
    message = data.get("error") or data.get("message") or "the job failed"
    return {"code": "job_failed", "message": str(message), "param": None}


def batch_view(job: BatchJobRow) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "batch",
        "input_files": job.input_files,
        "endpoint": job.endpoint,
        "model": job.model,
        "metadata": job.job_metadata,
        "errors": job.errors,
        "status": job.status,
        "created_at": unix(job.created_at),
        "started_at": unix(job.started_at),
        "completed_at": unix(job.completed_at),
        "total_requests": job.total_requests,
        "completed_requests": job.completed_requests,
        "succeeded_requests": job.succeeded_requests,
        "failed_requests": job.failed_requests,
        "output_file": job.output_file,
        "error_file": job.error_file,
    }


def openai_batch_view(row: BatchJobRow) -> dict[str, Any]:
    """A batch job in OpenAI's Batch shape, from its Mistral view."""
    job = batch_view(row)
    status = _BATCH_STATUS[job["status"]]
    ended = job["completed_at"]
    errors = [{"code": "batch_error", "message": e["message"], "line": None, "param": None} for e in job["errors"]]
    return {
        "id": job["id"],
        "object": "batch",
        "endpoint": job["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": job["input_files"][0],
        "completion_window": "24h",
        "status": status,
        "output_file_id": job["output_file"],
        "error_file_id": job["error_file"],
        "created_at": job["created_at"],
        "in_progress_at": job["started_at"],
        "expires_at": job["created_at"] + int(WINDOW.total_seconds()),
        "finalizing_at": ended if status == "completed" else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": {
            "total": job["total_requests"],
            "completed": job["succeeded_requests"],
            "failed": job["failed_requests"],
        },
        "metadata": job["metadata"],
    }
