"""Organisations and workspaces: creation and changes, each audited."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..store import Organisation, RequestLog, Workspace
from ..store.types import utcnow
from . import audit
from .audit import Actor
from ..errors import Conflict, Invalid
from .principal import LIMIT_FIELDS, NO_LIMITS, Limits

_WORKSPACE_ID = re.compile(r"ws_[0-9a-f]{16}")


def workspace_dir(home: Path, workspace_id: str) -> Path:
    """Where a workspace's files live: `<home>/workspaces/<id>/`."""
    # The id becomes a path: accept only the shape we generate, never `..` or `/`.
    if not _WORKSPACE_ID.fullmatch(workspace_id):
        raise Invalid(f"'{workspace_id}' is not a workspace id", code="invalid_workspace_id")
    return home / "workspaces" / workspace_id


def _flush(session: Session, message: str) -> None:
    """Flushes, reporting a uniqueness clash (a race the pre-check lost) as 409."""
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(message) from None


def create_organisation(session: Session, name: str, actor: Actor, *, is_platform: bool = False) -> Organisation:
    if session.scalar(select(Organisation.id).where(Organisation.name == name)) is not None:
        raise Conflict(f"An organisation named '{name}' already exists")
    organisation = Organisation(name=name, is_platform=is_platform)
    session.add(organisation)
    _flush(session, f"An organisation named '{name}' already exists")
    audit.record(
        session,
        "organisation.create",
        actor,
        organisation_id=organisation.id,
        target=organisation.id,
        details={"name": name},
    )
    return organisation


def rename_organisation(session: Session, organisation: Organisation, name: str, actor: Actor) -> Organisation:
    if session.scalar(select(Organisation.id).where(Organisation.name == name, Organisation.id != organisation.id)):
        raise Conflict(f"An organisation named '{name}' already exists")
    organisation.name = name
    _flush(session, f"An organisation named '{name}' already exists")
    audit.record(
        session,
        "organisation.update",
        actor,
        organisation_id=organisation.id,
        target=organisation.id,
        details={"name": name},
    )
    return organisation


def _check_workspace_name(session: Session, organisation_id: str, name: str, exclude_id: str | None = None) -> None:
    statement = select(Workspace.id).where(Workspace.organisation_id == organisation_id, Workspace.name == name)
    if exclude_id is not None:
        statement = statement.where(Workspace.id != exclude_id)
    if session.scalar(statement) is not None:
        raise Conflict(f"This organisation already has a workspace named '{name}'")


def create_workspace(
    session: Session,
    organisation: Organisation,
    name: str,
    actor: Actor,
    limits: Limits = NO_LIMITS,
    request_log_retention_days: int | None = None,
) -> Workspace:
    _check_workspace_name(session, organisation.id, name)
    workspace = Workspace(
        organisation_id=organisation.id,
        name=name,
        request_log_retention_days=request_log_retention_days,
        **limits.as_dict(),
    )
    session.add(workspace)
    _flush(session, f"This organisation already has a workspace named '{name}'")
    audit.record(
        session,
        "workspace.create",
        actor,
        organisation_id=organisation.id,
        workspace_id=workspace.id,
        target=workspace.id,
        details={
            "name": name,
            "limits": limits.as_dict(),
            "request_log_retention_days": request_log_retention_days,
        },
    )
    return workspace


def update_workspace(
    session: Session,
    workspace: Workspace,
    actor: Actor,
    *,
    name: str | None = None,
    limits: dict[str, int | None] | None = None,
) -> Workspace:
    """Renames and/or changes the limits named in `limits` (None there lifts one)."""
    changes: dict[str, object] = {}
    if name is not None and name != workspace.name:
        _check_workspace_name(session, workspace.organisation_id, name, exclude_id=workspace.id)
        workspace.name = name
        changes["name"] = name
    for field, value in (limits or {}).items():
        if field not in LIMIT_FIELDS:
            raise ValueError(f"unknown limit {field!r}")
        setattr(workspace, field, value)
        changes[field] = value
    _flush(session, f"This organisation already has a workspace named '{name}'")
    audit.record(
        session,
        "workspace.update",
        actor,
        organisation_id=workspace.organisation_id,
        workspace_id=workspace.id,
        target=workspace.id,
        details=changes,
    )
    return workspace


def set_scheduling_weight(session: Session, workspace: Workspace, weight: float | None, actor: Actor) -> Workspace:
    """Sets the workspace's share of the engines (None: the operator's default).
    Servers read it with the key on each request, so it applies to new requests."""
    if weight is not None and not weight > 0:
        raise Invalid("A scheduling weight must be positive", param="scheduling_weight")
    workspace.scheduling_weight = weight
    audit.record(
        session,
        "workspace.scheduling_weight",
        actor,
        organisation_id=workspace.organisation_id,
        workspace_id=workspace.id,
        target=workspace.id,
        details={"scheduling_weight": weight},
    )
    return workspace


def set_request_log_retention(session: Session, workspace: Workspace, days: int | None, actor: Actor) -> Workspace:
    """Stores the workspace's request and response bodies for `days` days from now
    on, or stops storing them (None). A shorter period applies to the logs already
    stored too: none outlives the new period counted from now. Turning storage
    off leaves them to expire (erasing the workspace removes them at once)."""
    workspace.request_log_retention_days = days
    if days is not None:
        cap = utcnow() + timedelta(days=days)
        session.execute(
            update(RequestLog)
            .where(RequestLog.workspace_id == workspace.id, RequestLog.expires_at > cap)
            .values(expires_at=cap)
        )
    audit.record(
        session,
        "workspace.request_logs",
        actor,
        organisation_id=workspace.organisation_id,
        workspace_id=workspace.id,
        target=workspace.id,
        details={"request_log_retention_days": days},
    )
    return workspace
