"""The audit log: every administrative action and every failed authentication.

Entries name keys by their public prefix (`tmt_<id>`), never by a secret."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..store import AuditEvent


@dataclass(frozen=True)
class Actor:
    """Who did something: a key's public prefix, "cli" or "system"."""

    label: str


CLI = Actor("cli")
SYSTEM = Actor("system")
ANONYMOUS = Actor("anonymous")


def record(
    session: Session,
    action: str,
    actor: Actor,
    *,
    outcome: str = "success",
    organisation_id: str | None = None,
    workspace_id: str | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            action=action,
            outcome=outcome,
            actor=actor.label,
            organisation_id=organisation_id,
            workspace_id=workspace_id,
            target=target,
            details=details or {},
        )
    )


def list_events(
    session: Session,
    *,
    organisation_id: str | None = None,
    workspace_id: str | None = None,
    action: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> Sequence[AuditEvent]:
    """Newest first; `before_id` pages backwards."""
    statement = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if organisation_id is not None:
        statement = statement.where(AuditEvent.organisation_id == organisation_id)
    if workspace_id is not None:
        statement = statement.where(AuditEvent.workspace_id == workspace_id)
    if action is not None:
        statement = statement.where(AuditEvent.action == action)
    if before_id is not None:
        statement = statement.where(AuditEvent.id < before_id)
    return session.scalars(statement).all()
