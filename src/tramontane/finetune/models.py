"""Durable state of files, fine-tuning jobs and batch jobs. A file's bytes live on
disk under its workspace's directory; the rows say what they are and whose."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..store.models import Base, WorkspaceOwned
from ..store.types import new_id, utcnow


class FileRow(WorkspaceOwned, Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("file"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    # Mistral's sample_type: instruct, batch_request, batch_result, batch_error.
    sample_type: Mapped[str] = mapped_column(String(32))
    # "upload" for the caller's files, "tramontane" for files the platform wrote (batch output).
    source: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    num_lines: Mapped[int | None] = mapped_column(Integer, default=None)
    mimetype: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FineTuningJobRow(WorkspaceOwned, Base):
    __tablename__ = "fine_tuning_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ftjob"))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), index=True)
    auto_start: Mapped[bool] = mapped_column(Boolean)
    # [{"file_id", "weight"}] and [file_id]
    training_files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    validation_files: Mapped[list[str]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(300), default=None)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Status changes [{"name", "data", "created_at"}] and checkpoints
    # [{"step_number", "metrics", "created_at"}], in Mistral's shapes.
    events: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    checkpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The API whose shapes the job was created in, and is shown in: "mistral" or "openai".
    api: Mapped[str] = mapped_column(String(16), default="mistral", server_default="mistral")
    # "completion" (a LoRA adapter of a chat model) or "classifier" (a head over an embedding model).
    job_type: Mapped[str] = mapped_column(String(16), default="completion", server_default="completion")
    # A classifier job's targets: [{"name", "labels", "weight", "loss_function"}].
    classifier_targets: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # What the job asked of its node ({"cpu", "gpus", "memory_mb"}, unset ones left
    # out), read by the Ray executor; None: the operator's defaults.
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class BatchJobRow(WorkspaceOwned, Base):
    __tablename__ = "batch_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("batch"))
    # The key that created the job, whose usage its requests are metered as
    # (None for jobs created before batch metering existed).
    api_key_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), default=None
    )
    input_files: Mapped[list[str]] = mapped_column(JSON)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    status: Mapped[str] = mapped_column(String(32), index=True)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    total_requests: Mapped[int] = mapped_column(Integer, default=0)
    completed_requests: Mapped[int] = mapped_column(Integer, default=0)
    succeeded_requests: Mapped[int] = mapped_column(Integer, default=0)
    failed_requests: Mapped[int] = mapped_column(Integer, default=0)
    output_file: Mapped[str | None] = mapped_column(String(32), default=None)
    error_file: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
