"""ORM models for tenancy: organisations own workspaces, workspaces own everything else.

Every table holding a workspace's data carries `workspace_id` with ON DELETE
CASCADE: erasing a workspace is deleting its row, and the database removes the
rest. Tables added later by other packages must follow the same rule (the
erasure test checks every table that has a `workspace_id` column).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from .types import UTCDateTime, new_id, utcnow

# Deterministic constraint names, so later migrations can alter them by name on
# both backends (SQLite's batch mode needs names to find them).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def _workspace_fk() -> Any:
    return ForeignKey("workspaces.id", ondelete="CASCADE")


class WorkspaceOwned:
    """For rows that belong to a workspace: erased with it, and found only through
    it (see `tramontane.tenancy.ownership.get_owned`)."""

    @declared_attr
    def workspace_id(cls) -> Mapped[str]:
        return mapped_column(String(32), _workspace_fk(), index=True)


class LimitColumns:
    """Per-minute, concurrency and monthly limits; NULL means unlimited."""

    requests_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_concurrent_requests: Mapped[int | None] = mapped_column(Integer, default=None)
    monthly_token_budget: Mapped[int | None] = mapped_column(BigInteger, default=None)


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("org"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The operator's own organisation: its admin keys administer every organisation.
    is_platform: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Workspace(LimitColumns, Base):
    __tablename__ = "workspaces"
    __table_args__ = (UniqueConstraint("organisation_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ws"))
    organisation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Request and response bodies are stored only when set: kept this many days.
    request_log_retention_days: Mapped[int | None] = mapped_column(Integer, default=None)
    # Its share of the engines against other workspaces (engine/scheduler.py); NULL:
    # the operator's `--workspace-weight` for it, else 1.
    scheduling_weight: Mapped[float | None] = mapped_column(Float, default=None)


class ApiKey(WorkspaceOwned, LimitColumns, Base):
    __tablename__ = "api_keys"

    # The public half of the key (`tmt_<id>_<secret>`); safe to show and to log.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # HMAC-SHA256(pepper, id:secret), hex; the secret itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64))
    # Space-separated capability names.
    capabilities: Mapped[str] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_workspace_day", "workspace_id", "day"),
        Index("ix_usage_records_key_day", "api_key_id", "day"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(32), _workspace_fk())
    api_key_id: Mapped[str] = mapped_column(String(32), ForeignKey("api_keys.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The UTC day, stored so daily reports group the same way on every backend.
    day: Mapped[date] = mapped_column(Date)
    model: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    energy_wh: Mapped[float] = mapped_column(Float)
    # "rapl", "nvml", "rapl+nvml" (measured) or "estimate".
    energy_source: Mapped[str] = mapped_column(String(16))


class RequestLog(Base):
    """One inference request and its response, stored because its workspace opted in."""

    __tablename__ = "request_logs"
    __table_args__ = (Index("ix_request_logs_workspace_request", "workspace_id", "request_id"),)

    # Also the list's order and cursor: rows are inserted as requests finish.
    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(32), _workspace_fk())
    api_key_id: Mapped[str] = mapped_column(String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[str] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column()
    completed_at: Mapped[datetime] = mapped_column()
    # Set from the workspace's retention when written; the purge deletes past it.
    expires_at: Mapped[datetime] = mapped_column(index=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    # "success", "failure" (authentication) or "denied" (authorisation).
    outcome: Mapped[str] = mapped_column(String(16))
    # A key's public prefix (`tmt_<id>`), "cli", "system" or "anonymous"; never a secret.
    actor: Mapped[str] = mapped_column(String(64))
    # The organisation and workspace the event concerns, so that erasing them erases it.
    organisation_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("organisations.id", ondelete="CASCADE"), index=True, default=None
    )
    workspace_id: Mapped[str | None] = mapped_column(String(32), _workspace_fk(), index=True, default=None)
    target: Mapped[str | None] = mapped_column(String(200), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class RateCounter(WorkspaceOwned, Base):
    """One fixed window of one limit for one key or workspace (`subject`)."""

    __tablename__ = "rate_counters"

    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Epoch seconds at which the window opened (a minute, or a calendar month).
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger)


class RequestLease(WorkspaceOwned, Base):
    """A request in flight, counted against concurrency limits; it expires so that a
    crashed server cannot hold a slot for ever."""

    __tablename__ = "request_leases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column()


class Setting(Base):
    """Small facts about the installation, such as whether the admin key was issued."""

    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
