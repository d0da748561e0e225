"""Finding objects on behalf of a caller. An object of another workspace (or, for
admins, another organisation) is reported as missing, 404, never as forbidden,
403: a 403 would confirm to a stranger that the id exists."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ..store import ApiKey, Organisation, Workspace, WorkspaceOwned
from .errors import not_found
from .principal import Principal

Owned = TypeVar("Owned", bound=WorkspaceOwned)


def _workspace_id(owner: Principal | str) -> str:
    return owner.workspace_id if isinstance(owner, Principal) else owner


def get_owned(
    session: Session,
    model: type[Owned],
    object_id: object,
    owner: Principal | str,
    what: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> Owned:
    """The `model` row `object_id` if it belongs to `owner` (the caller, or a
    workspace id for work done on a workspace's behalf), else NotFound: "No
    <what> with id '<object_id>'", with `code` (default `<what>_not_found`) and `param`."""
    found = session.get(model, object_id)
    if found is None or found.workspace_id != _workspace_id(owner):
        raise not_found(what, str(object_id), code=code, param=param)
    return found


def owned(model: type[Owned], owner: Principal | str) -> Select[tuple[Owned]]:
    """A query for `owner`'s workspace's `model` rows, to refine and run."""
    return select(model).where(model.workspace_id == _workspace_id(owner))


def _administers(principal: Principal, organisation_id: str) -> bool:
    return principal.platform_admin or principal.organisation_id == organisation_id


def admin_organisation(session: Session, principal: Principal, organisation_id: str) -> Organisation:
    """An organisation the admin key administers, else 404."""
    organisation = session.get(Organisation, organisation_id)
    if organisation is None or not _administers(principal, organisation.id):
        raise not_found("organisation", organisation_id)
    return organisation


def admin_workspace(session: Session, principal: Principal, workspace_id: str) -> Workspace:
    """A workspace in an organisation the admin key administers, else 404."""
    workspace = session.get(Workspace, workspace_id)
    if workspace is None or not _administers(principal, workspace.organisation_id):
        raise not_found("workspace", workspace_id)
    return workspace


def admin_key(session: Session, principal: Principal, key_id: str) -> tuple[ApiKey, Workspace]:
    """A key of a workspace the admin key administers (with that workspace), else 404."""
    key = session.get(ApiKey, key_id)
    workspace = session.get(Workspace, key.workspace_id) if key is not None else None
    if key is None or workspace is None or not _administers(principal, workspace.organisation_id):
        raise not_found("API key", key_id)
    return key, workspace
