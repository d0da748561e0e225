"""OpenAI's fine-tuning shapes over the same jobs as Mistral's: a create body with
`training_file` and OpenAI's `hyperparameters` (or `method.supervised`), the
lowercase statuses, and the job's events and checkpoints as OpenAI's lists. The
`fine_tuning.job` view itself is built in `views`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .models import FineTuningJobRow
from .schemas import CreateJobRequest, Hyperparameters, TrainingFile

# Mistral's default rate: OpenAI's learning_rate_multiplier scales it.
BASE_LEARNING_RATE = 1e-4
OPENAI_STATUS = {
    "VALIDATING": "validating_files",
    "VALIDATED": "queued",
    "QUEUED": "queued",
    "RUNNING": "running",
    "SUCCESS": "succeeded",
    "FAILED": "failed",
    "FAILED_VALIDATION": "failed",
    "CANCELLATION_REQUESTED": "cancelled",
    "CANCELLED": "cancelled",
}


class OpenAIHyperparameters(BaseModel):
    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class SupervisedMethod(BaseModel):
    hyperparameters: OpenAIHyperparameters = Field(default_factory=OpenAIHyperparameters)


class Method(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethod | None = None


class CreateOpenAIJob(BaseModel):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: OpenAIHyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(None, max_length=18, pattern=r"^[A-Za-z0-9_-]+$")
    seed: int | None = None
    metadata: dict[str, str] | None = None

    def as_mistral(self) -> CreateJobRequest:
        chosen = self.hyperparameters
        if chosen is None and self.method is not None and self.method.supervised is not None:
            chosen = self.method.supervised.hyperparameters
        chosen = chosen or OpenAIHyperparameters()
        params = Hyperparameters(
            epochs=None if chosen.n_epochs == "auto" else float(chosen.n_epochs),
            learning_rate=BASE_LEARNING_RATE * (1.0 if chosen.learning_rate_multiplier == "auto"
                                                else chosen.learning_rate_multiplier),
        )
        return CreateJobRequest(
            model=self.model,
            training_files=[TrainingFile(file_id=self.training_file)],
            validation_files=[self.validation_file] if self.validation_file else None,
            hyperparameters=params,
            suffix=self.suffix,
        )


def openai_events(job: FineTuningJobRow) -> list[dict[str, Any]]:
    """The job's status changes and checkpoints as `fine_tuning.job.event`s, newest first."""
    events = [
        {
            "id": f"ftevent-{job.id}-{index}",
            "object": "fine_tuning.job.event",
            "created_at": event["created_at"],
            "level": "error" if event["data"].get("status") in ("FAILED", "FAILED_VALIDATION") else "info",
            "message": f"Status: {OPENAI_STATUS.get(event['data'].get('status', ''), event['data'].get('status'))}",
            "type": "message",
            "data": event["data"],
        }
        for index, event in enumerate(job.events)
    ]
    events += [
        {
            "id": f"ftevent-{job.id}-step-{checkpoint['step_number']}",
            "object": "fine_tuning.job.event",
            "created_at": checkpoint["created_at"],
            "level": "info",
            "message": f"Step {checkpoint['step_number']}",
            "type": "metrics",
            "data": {"step": checkpoint["step_number"], **checkpoint.get("metrics", {})},
        }
        for checkpoint in job.checkpoints
    ]
    return sorted(events, key=lambda e: e["created_at"] or 0, reverse=True)


def openai_checkpoints(job: FineTuningJobRow) -> list[dict[str, Any]]:
    return [
        {
            "id": f"ftckpt-{job.id}-{checkpoint['step_number']}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": checkpoint["created_at"],
            "fine_tuned_model_checkpoint": f"{job.fine_tuned_model or job.id}:ckpt-step-{checkpoint['step_number']}",
            "fine_tuning_job_id": job.id,
            "step_number": checkpoint["step_number"],
            "metrics": {"step": checkpoint["step_number"], **checkpoint.get("metrics", {})},
        }
        for checkpoint in reversed(job.checkpoints)
    ]


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page over `items` (already in their listing order)."""
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    chosen = items[:limit]
    return {
        "object": "list",
        "data": chosen,
        "first_id": chosen[0]["id"] if chosen else None,
        "last_id": chosen[-1]["id"] if chosen else None,
        "has_more": len(items) > limit,
    }
