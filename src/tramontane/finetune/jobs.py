"""Fine-tuning jobs: creation with dataset validation and the status machine.
The API's views of a job are built in `views`."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..engine import InvalidRequestError, Tokenizer, load_tokenizer
from ..errors import Conflict, Invalid, NotFound
from ..store import Store
from ..store.types import new_id, utcnow
from ..tenancy import get_owned, owned
from ..tenancy.directory import workspace_dir
from . import classifier_jobs
from .dataset import DatasetError, Example, encode, parse_chat_jsonl
from .files import FileStore
from .models import FineTuningJobRow
from .openai_jobs import openai_checkpoints, openai_events
from .schemas import CreateJobRequest

QUEUED, VALIDATING, VALIDATED, RUNNING = "QUEUED", "VALIDATING", "VALIDATED", "RUNNING"
SUCCESS, FAILED, FAILED_VALIDATION = "SUCCESS", "FAILED", "FAILED_VALIDATION"
CANCELLATION_REQUESTED, CANCELLED = "CANCELLATION_REQUESTED", "CANCELLED"
TERMINAL = frozenset({SUCCESS, FAILED, FAILED_VALIDATION, CANCELLED})

DEFAULT_SEQ_LEN = 512
DEFAULT_WEIGHT_DECAY = 0.1
DEFAULT_WARMUP_FRACTION = 0.05
MAX_BATCH_SIZE = 4
CHECKPOINTS_PER_JOB = 5


@dataclass(frozen=True)
class ReadyModel:
    """A succeeded job's adapter (or classifier head), ready to serve as `model_id`
    to `workspace_id` only."""

    model_id: str
    base_model: str
    adapter_path: Path
    job_id: str
    workspace_id: str
    job_type: str = "completion"


def ready_model(home: Path, job: FineTuningJobRow) -> ReadyModel:
    name = job.fine_tuned_model or model_id(job)
    folder = "classifier" if job.job_type == "classifier" else "adapter"
    return ReadyModel(name, job.model, job_dir(home, job) / folder, job.id, job.workspace_id, job.job_type)


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def transition(job: FineTuningJobRow, status: str, **data: Any) -> None:
    """Moves `job` to `status` and records the change as a Mistral event."""
    job.status = status
    job.modified_at = utcnow()
    event = {"name": "status-updated", "data": {"status": status, **data}, "created_at": unix(job.modified_at)}
    job.events = [*job.events, event]  # a new list: SQLAlchemy tracks JSON by assignment


def job_dir(home: Path, job: FineTuningJobRow) -> Path:
    return workspace_dir(home, job.workspace_id) / "fine_tuning" / job.id


def model_id(job: FineTuningJobRow) -> str:
    short = job.id.rsplit("_", 1)[-1][:8]
    return f"ft:{job.model}:{job.suffix}:{short}" if job.suffix else f"ft:{job.model}:{short}"


class FineTuningJobs:
    def __init__(self, store: Store, files: FileStore, base_models: Mapping[str, str]):
        self.store = store
        self.files = files
        self.base_models = dict(base_models)
        # The embedding models classifier jobs train on, by name: their checkpoints.
        self.embedding_models: dict[str, str] = {}
        self._tokenizers: dict[str, Tokenizer] = {}
        self._lock = threading.Lock()
        self.on_queued: Callable[[], None] = lambda: None  # wakes the worker

    def tokenizer(self, model: str) -> Tokenizer:
        with self._lock:
            if model not in self._tokenizers:
                self._tokenizers[model] = load_tokenizer(self.base_models[model])
            return self._tokenizers[model]

    def examples(self, workspace_id: str, model: str, file_id: str, seq_len: int) -> list[Example]:
        """A training or validation file's examples, token ids and loss masks; raises
        DatasetError naming each bad line."""
        row = self.files.get(workspace_id, file_id)
        records = parse_chat_jsonl(self.files.read(row), row.filename)
        tokenizer, examples, errors = self.tokenizer(model), [], []
        for record in records:
            try:
                examples.append(encode(tokenizer, record, seq_len))
            except (InvalidRequestError, DatasetError) as exc:
                errors.append(f"{row.filename}: line {record['_line']}: {exc}")
        if errors:
            raise DatasetError(errors)
        return examples

    # -- API operations --------------------------------------------------------------

    def create(self, workspace_id: str, request: CreateJobRequest, api: str = "mistral") -> FineTuningJobRow:
        """A new job (validated at once); `api` is the shape it is shown in from now on."""
        classifier = request.job_type == "classifier"
        if classifier and request.model not in self.embedding_models:
            served = ", ".join(sorted(self.embedding_models)) or "none is served"
            raise NotFound(
                f"Classifier jobs train a head on an embedding model ({served}), not on '{request.model}'",
                code="model_not_found",
                param="model",
            )
        if not classifier and request.model not in self.base_models:
            raise NotFound(f"The model '{request.model}' cannot be fine-tuned here", code="model_not_found", param="model"
            )
        if request.classifier_targets and not classifier:
            raise Invalid("classifier_targets is for job_type 'classifier'", param="classifier_targets")
        hyperparameters = request.hyperparameters.model_dump()
        if classifier and "learning_rate" not in request.hyperparameters.model_fields_set:
            hyperparameters["learning_rate"] = classifier_jobs.DEFAULT_LEARNING_RATE
        file_ids = [f.file_id for f in request.training_files] + list(request.validation_files or [])
        for file_id in file_ids:
            if self.files.get(workspace_id, file_id).purpose != "fine-tune":
                raise Invalid(f"File '{file_id}' was not uploaded with purpose 'fine-tune'", param="training_files"
                )
        job = FineTuningJobRow(
            id=new_id("ftjob"),
            workspace_id=workspace_id,
            model=request.model,
            status=QUEUED,
            auto_start=request.auto_start,
            training_files=[f.model_dump() for f in request.training_files],
            validation_files=list(request.validation_files or []),
            hyperparameters=hyperparameters,
            suffix=request.suffix,
            events=[],
            checkpoints=[],
            api=api,
            job_type="classifier" if classifier else "completion",
            classifier_targets=[t.model_dump() for t in request.classifier_targets or []] or None,
            resources=request.resources.model_dump(exclude_none=True) if request.resources else None,
        )
        transition(job, VALIDATING)
        self._validate(job)
        if job.status == VALIDATED and job.auto_start:
            transition(job, QUEUED)
        with self.store.write_session() as session:
            session.add(job)
        if job.status == QUEUED:
            self.on_queued()
        return job

    def _validate(self, job: FineTuningJobRow) -> None:
        """Reads every file as the trainer will; the job ends FAILED_VALIDATION with
        the bad lines listed in its event, or VALIDATED with its hyperparameters resolved."""
        if job.job_type == "classifier":
            self._validate_classifier(job)
            return
        params = dict(job.hyperparameters)
        seq_len = params["seq_len"] or DEFAULT_SEQ_LEN
        errors: list[str] = []
        train_count = 0
        for file_id in [f["file_id"] for f in job.training_files] + job.validation_files:
            try:
                count = len(self.examples(job.workspace_id, job.model, file_id, seq_len))
            except DatasetError as exc:
                errors.extend(exc.errors)
                continue
            if file_id not in job.validation_files:
                train_count += count
        if errors:
            transition(job, FAILED_VALIDATION, errors=errors)
            return
        batch = min(MAX_BATCH_SIZE, train_count)
        epochs = params["epochs"] if params["epochs"] is not None else (None if params["training_steps"] else 1.0)
        steps = params["training_steps"] or max(1, math.ceil(epochs * train_count / batch))
        job.hyperparameters = {
            **params,
            "training_steps": steps,
            "epochs": epochs if epochs is not None else steps * batch / train_count,
            "seq_len": seq_len,
            "weight_decay": DEFAULT_WEIGHT_DECAY if params["weight_decay"] is None else params["weight_decay"],
            "warmup_fraction": DEFAULT_WARMUP_FRACTION
            if params["warmup_fraction"] is None
            else params["warmup_fraction"],
        }
        transition(job, VALIDATED)

    def _validate_classifier(self, job: FineTuningJobRow) -> None:
        """Labelled files (line-numbered errors), and the targets they fit; a full-batch
        fit, so `training_steps` are epochs too."""
        examples, errors = [], []
        for file_id in [f["file_id"] for f in job.training_files] + job.validation_files:
            try:
                found = classifier_jobs.read_examples(self.files, job.workspace_id, file_id)
            except DatasetError as exc:
                errors.extend(exc.errors)
                continue
            if file_id not in job.validation_files:
                examples += found
        if not errors:
            try:
                job.classifier_targets = classifier_jobs.resolve_targets(job, examples)
            except DatasetError as exc:
                errors.extend(exc.errors)
        if errors:
            transition(job, FAILED_VALIDATION, errors=errors)
            return
        params = dict(job.hyperparameters)
        steps = params["training_steps"] or classifier_jobs.DEFAULT_STEPS
        job.hyperparameters = {
            **params,
            "training_steps": steps,
            "epochs": float(steps),
            "weight_decay": 1e-4 if params["weight_decay"] is None else params["weight_decay"],
            "warmup_fraction": 0.0,
        }
        transition(job, VALIDATED)

    def _owned(self, session: Session, workspace_id: str, job_id: str) -> FineTuningJobRow:
        return get_owned(
            session, FineTuningJobRow, job_id, workspace_id, "fine-tuning job", code="job_not_found", param="job_id"
        )

    def get(self, workspace_id: str, job_id: str) -> FineTuningJobRow:
        with self.store.session() as session:
            return self._owned(session, workspace_id, job_id)

    def list(
        self,
        workspace_id: str,
        *,
        page: int,
        page_size: int,
        model: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        suffix: str | None = None,
    ) -> tuple[list[FineTuningJobRow], int]:
        """One page of the workspace's jobs, newest first, and how many match in all."""
        query = owned(FineTuningJobRow, workspace_id)
        for column, value in (
            (FineTuningJobRow.model, model),
            (FineTuningJobRow.status, status),
            (FineTuningJobRow.suffix, suffix),
        ):
            if value is not None:
                query = query.where(column == value)
        if created_after is not None:
            query = query.where(FineTuningJobRow.created_at > created_after)
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            jobs = session.scalars(
                query.order_by(FineTuningJobRow.created_at.desc(), FineTuningJobRow.id)
                .offset(page * page_size)
                .limit(page_size)
            ).all()
            return list(jobs), total

    def start(self, workspace_id: str, job_id: str) -> FineTuningJobRow:
        with self.store.write_session() as session:
            job = self._owned(session, workspace_id, job_id)
            if job.status != VALIDATED:
                raise Conflict(f"Job '{job_id}' is {job.status}; only a VALIDATED job can be started", code="invalid_status"
                )
            transition(job, QUEUED)
        self.on_queued()
        return job

    def openai_events(self, workspace_id: str, job_id: str) -> list[dict[str, Any]]:
        with self.store.session() as session:
            return openai_events(self._owned(session, workspace_id, job_id))

    def openai_checkpoints(self, workspace_id: str, job_id: str) -> list[dict[str, Any]]:
        with self.store.session() as session:
            return openai_checkpoints(self._owned(session, workspace_id, job_id))

    def cancel(self, workspace_id: str, job_id: str) -> FineTuningJobRow:
        """Cancels a job not yet running at once; a running one stops at its next step."""
        with self.store.write_session() as session:
            job = self._owned(session, workspace_id, job_id)
            if job.status in TERMINAL:
                raise Conflict(f"Job '{job_id}' is already {job.status}", code="invalid_status")
            if job.status == RUNNING:
                transition(job, CANCELLATION_REQUESTED)
            elif job.status != CANCELLATION_REQUESTED:
                transition(job, CANCELLED)
            return job
