"""The admin REST API under /v1/admin; every route needs the `admin` capability.

An admin key administers its own organisation; an admin key of the platform
organisation administers all of them. Anything outside the caller's reach
answers 404, as if it did not exist."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from ..store import ApiKey, Organisation, Workspace
from ..store.types import utcnow
from . import audit, directory, keys, usage
from .admin_schemas import (
    AuditEventOut,
    CreatedKeyOut,
    DeletedOut,
    KeyIn,
    KeyOut,
    ListOut,
    OrganisationIn,
    OrganisationOut,
    UsageReportOut,
    WorkspaceIn,
    WorkspaceOut,
    WorkspacePatch,
)
from .audit import Actor
from .capabilities import Capability
from .dependencies import TenancyDep, require
from ..errors import Forbidden, Invalid
from .ownership import admin_key, admin_organisation, admin_workspace
from .principal import Principal

# Changes run in write sessions (SQLite: BEGIN IMMEDIATE): they read, then write, and a
# deferred transaction fails at once when another writer (usage, request logs)
# committed in between, where an immediate one waits its turn.
router = APIRouter(prefix="/v1/admin", tags=["admin"])

Admin = Annotated[Principal, Depends(require(Capability.ADMIN))]


def _platform_only(principal: Principal) -> None:
    if not principal.platform_admin:
        raise Forbidden("Only a platform admin key can do this", code="platform_admin_required")


@router.get("/organisations")
def list_organisations(principal: Admin, tenancy: TenancyDep) -> ListOut[OrganisationOut]:
    statement = select(Organisation).order_by(Organisation.created_at)
    if not principal.platform_admin:
        statement = statement.where(Organisation.id == principal.organisation_id)
    with tenancy.store.session() as session:
        return ListOut(data=[OrganisationOut.of(o) for o in session.scalars(statement)])


@router.post("/organisations", status_code=201)
def create_organisation(body: OrganisationIn, principal: Admin, tenancy: TenancyDep) -> OrganisationOut:
    _platform_only(principal)
    with tenancy.store.write_session() as session:
        return OrganisationOut.of(directory.create_organisation(session, body.name, Actor(principal.key_prefix)))


@router.get("/organisations/{organisation_id}")
def get_organisation(organisation_id: str, principal: Admin, tenancy: TenancyDep) -> OrganisationOut:
    with tenancy.store.session() as session:
        return OrganisationOut.of(admin_organisation(session, principal, organisation_id))


@router.patch("/organisations/{organisation_id}")
def rename_organisation(
    organisation_id: str, body: OrganisationIn, principal: Admin, tenancy: TenancyDep
) -> OrganisationOut:
    with tenancy.store.write_session() as session:
        organisation = admin_organisation(session, principal, organisation_id)
        return OrganisationOut.of(
            directory.rename_organisation(session, organisation, body.name, Actor(principal.key_prefix))
        )


@router.delete("/organisations/{organisation_id}")
def erase_organisation(organisation_id: str, principal: Admin, tenancy: TenancyDep) -> DeletedOut:
    """Erases the organisation, all its workspaces and everything they hold."""
    with tenancy.store.session() as session:
        admin_organisation(session, principal, organisation_id)
    _platform_only(principal)
    tenancy.erase_organisation(organisation_id, Actor(principal.key_prefix))
    return DeletedOut(id=organisation_id, object="organisation")


@router.get("/workspaces")
def list_workspaces(principal: Admin, tenancy: TenancyDep, organisation_id: str | None = None) -> ListOut[WorkspaceOut]:
    statement = select(Workspace).order_by(Workspace.created_at)
    with tenancy.store.session() as session:
        if organisation_id is not None:
            statement = statement.where(
                Workspace.organisation_id == admin_organisation(session, principal, organisation_id).id
            )
        elif not principal.platform_admin:
            statement = statement.where(Workspace.organisation_id == principal.organisation_id)
        return ListOut(data=[WorkspaceOut.of(w) for w in session.scalars(statement)])


@router.post("/workspaces", status_code=201)
def create_workspace(body: WorkspaceIn, principal: Admin, tenancy: TenancyDep) -> WorkspaceOut:
    with tenancy.store.write_session() as session:
        organisation = admin_organisation(session, principal, body.organisation_id or principal.organisation_id)
        workspace = directory.create_workspace(
            session,
            organisation,
            body.name,
            Actor(principal.key_prefix),
            body.limits.to_limits(),
            body.request_log_retention_days,
        )
        if body.scheduling_weight is not None:
            _check_may_weigh(principal)
            directory.set_scheduling_weight(session, workspace, body.scheduling_weight, Actor(principal.key_prefix))
        return WorkspaceOut.of(workspace)


@router.get("/workspaces/{workspace_id}")
def get_workspace(workspace_id: str, principal: Admin, tenancy: TenancyDep) -> WorkspaceOut:
    with tenancy.store.session() as session:
        return WorkspaceOut.of(admin_workspace(session, principal, workspace_id))


@router.patch("/workspaces/{workspace_id}")
def update_workspace(workspace_id: str, body: WorkspacePatch, principal: Admin, tenancy: TenancyDep) -> WorkspaceOut:
    limits = body.limits.model_dump(include=body.limits.model_fields_set) if body.limits else None
    with tenancy.store.write_session() as session:
        workspace = admin_workspace(session, principal, workspace_id)
        actor = Actor(principal.key_prefix)
        if body.name is not None or limits is not None:
            directory.update_workspace(session, workspace, actor, name=body.name, limits=limits)
        if "request_log_retention_days" in body.model_fields_set:
            directory.set_request_log_retention(session, workspace, body.request_log_retention_days, actor)
        if "scheduling_weight" in body.model_fields_set:
            _check_may_weigh(principal)
            directory.set_scheduling_weight(session, workspace, body.scheduling_weight, actor)
        return WorkspaceOut.of(workspace)


def _check_may_weigh(principal: Principal) -> None:
    """A workspace's weight takes engine time from every other organisation's."""
    if not principal.platform_admin:
        raise Forbidden(
            "Only an admin key of the platform organisation may set a scheduling weight",
            code="platform_admin_required",
            param="scheduling_weight",
        )


@router.delete("/workspaces/{workspace_id}")
def erase_workspace(workspace_id: str, principal: Admin, tenancy: TenancyDep) -> DeletedOut:
    """Erases the workspace: its keys, usage, request logs, audit entries, counters and files."""
    with tenancy.store.session() as session:
        admin_workspace(session, principal, workspace_id)
    tenancy.erase_workspace(workspace_id, Actor(principal.key_prefix))
    return DeletedOut(id=workspace_id, object="workspace")


@router.get("/workspaces/{workspace_id}/keys")
def list_keys(workspace_id: str, principal: Admin, tenancy: TenancyDep) -> ListOut[KeyOut]:
    now = utcnow()
    with tenancy.store.session() as session:
        workspace = admin_workspace(session, principal, workspace_id)
        rows = session.scalars(select(ApiKey).where(ApiKey.workspace_id == workspace.id).order_by(ApiKey.created_at))
        return ListOut(data=[KeyOut.of(k, now) for k in rows])


@router.post("/workspaces/{workspace_id}/keys", status_code=201)
def create_key(workspace_id: str, body: KeyIn, principal: Admin, tenancy: TenancyDep) -> CreatedKeyOut:
    """Creates a key; the response is the only time its secret is shown."""
    requested = frozenset(body.capabilities)
    if not requested <= principal.capabilities:
        missing = ", ".join(sorted(requested - principal.capabilities))
        raise Forbidden(f"Cannot grant capabilities this key lacks: {missing}", code="insufficient_capability")
    now = utcnow()
    expires_at = body.expires_at or (now + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None)
    if expires_at is not None and expires_at.tzinfo is None:
        raise Invalid("expires_at needs a timezone", code="invalid_expiry", param="expires_at")
    with tenancy.store.write_session() as session:
        workspace = admin_workspace(session, principal, workspace_id)
        created = keys.create_key(
            session,
            tenancy.pepper,
            workspace,
            name=body.name,
            capabilities=requested,
            actor=Actor(principal.key_prefix),
            expires_at=expires_at,
            limits=body.limits.to_limits(),
        )
        return CreatedKeyOut(**KeyOut.of(created.key, now).model_dump(), key=created.plaintext)


@router.get("/keys/{key_id}")
def get_key(key_id: str, principal: Admin, tenancy: TenancyDep) -> KeyOut:
    with tenancy.store.session() as session:
        key, _ = admin_key(session, principal, key_id)
        return KeyOut.of(key, utcnow())


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, principal: Admin, tenancy: TenancyDep) -> KeyOut:
    """Revokes the key; its next request fails, whichever server receives it."""
    with tenancy.store.write_session() as session:
        key, workspace = admin_key(session, principal, key_id)
        keys.revoke_key(session, key, workspace.organisation_id, Actor(principal.key_prefix))
        return KeyOut.of(key, utcnow())


@router.get("/usage")
def usage_report(
    principal: Admin,
    tenancy: TenancyDep,
    group_by: Annotated[list[str], Query()] = ["day"],  # noqa: B006 (FastAPI copies defaults)
    organisation_id: str | None = None,
    workspace_id: str | None = None,
    key_id: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> UsageReportOut:
    with tenancy.store.session() as session:
        if workspace_id is not None:
            admin_workspace(session, principal, workspace_id)
        if key_id is not None:
            admin_key(session, principal, key_id)
        if organisation_id is not None:
            admin_organisation(session, principal, organisation_id)
        elif not principal.platform_admin:
            organisation_id = principal.organisation_id
    try:
        rows = usage.report(
            tenancy.store,
            group_by=group_by,
            organisation_id=organisation_id,
            workspace_id=workspace_id,
            key_id=key_id,
            since=since,
            until=until,
        )
    except ValueError as exc:
        raise Invalid(str(exc), code="invalid_group_by", param="group_by") from None
    return UsageReportOut(group_by=group_by, since=since, until=until, data=rows)


@router.get("/audit")
def list_audit_events(
    principal: Admin,
    tenancy: TenancyDep,
    organisation_id: str | None = None,
    workspace_id: str | None = None,
    action: str | None = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,  # a 64-bit row id
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListOut[AuditEventOut]:
    with tenancy.store.session() as session:
        if workspace_id is not None:
            admin_workspace(session, principal, workspace_id)
        if organisation_id is not None:
            admin_organisation(session, principal, organisation_id)
        elif not principal.platform_admin:
            organisation_id = principal.organisation_id
        events = audit.list_events(
            session,
            organisation_id=organisation_id,
            workspace_id=workspace_id,
            action=action,
            before_id=before_id,
            limit=limit,
        )
        return ListOut(data=[AuditEventOut.of(e) for e in events])
