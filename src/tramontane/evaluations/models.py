"""Durable state of evaluation and red-team jobs. Per-item results live on disk
under the workspace's directory (one JSONL line per finished item), so a job
that stops keeps every item it finished and resumes after the last one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..store.models import Base, WorkspaceOwned
from ..store.types import new_id, utcnow


class EvaluationJobRow(WorkspaceOwned, Base):
    __tablename__ = "evaluation_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("eval"))
    # The key that created the job: its model calls are metered and limited as that key's.
    api_key_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), default=None
    )
    kind: Mapped[str] = mapped_column(String(16))  # "evaluation" or "red_team"
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    status: Mapped[str] = mapped_column(String(32), index=True)
    # The validated request: dataset or attack families, targets, metrics, judge, completion args.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    completed_items: Mapped[int] = mapped_column(Integer, default=0)
    failed_items: Mapped[int] = mapped_column(Integer, default=0)
    # Status changes and resumptions [{"name", "data", "created_at"}], as fine-tuning jobs keep them.
    events: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # Aggregates, comparisons or the red-team report, written when the job succeeds.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
