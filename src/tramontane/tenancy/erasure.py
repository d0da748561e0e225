"""Erasure: a workspace (or a whole organisation) and everything it owns, rows and
files, gone for good.

The database does the row work: every table holding a workspace's data
references it with ON DELETE CASCADE. What cascades cannot reach is scrubbed
here: audit entries elsewhere naming the workspace's keys as actor. The entry
recording the erasure names the workspace only by a SHA-256 digest of its id,
so that an auditor holding the id can confirm it was erased while the database
keeps nothing of it. On SQLite, `secure_delete` zeroes the freed pages and a
checkpoint empties the write-ahead log, so no deleted bytes stay in the files.
On PostgreSQL, deleted rows' bytes remain in table pages until vacuum reuses
them, and in WAL archives and backups, as with any deletion there.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..store import ApiKey, AuditEvent, Organisation, Store, Workspace
from . import audit
from .audit import Actor
from .directory import workspace_dir
from ..errors import Conflict
from .errors import not_found
from .principal import KEY_PREFIX

ERASED_ACTOR = "erased"


def digest(identifier: str) -> str:
    return "sha256:" + hashlib.sha256(identifier.encode()).hexdigest()


def _remove_files(home: Path, workspace_id: str) -> None:
    directory = workspace_dir(home, workspace_id)
    if directory.exists():
        shutil.rmtree(directory)


def _erase_rows(session: Session, workspace: Workspace) -> None:
    key_ids = session.scalars(select(ApiKey.id).where(ApiKey.workspace_id == workspace.id))
    prefixes = [f"{KEY_PREFIX}{key_id}" for key_id in key_ids]
    if prefixes:
        session.execute(update(AuditEvent).where(AuditEvent.actor.in_(prefixes)).values(actor=ERASED_ACTOR))
    session.execute(delete(Workspace).where(Workspace.id == workspace.id))


def erase_workspace(store: Store, home: Path, workspace_id: str, actor: Actor) -> None:
    """Deletes the workspace's files, then its rows; raises NotFound if it is gone.
    Files go first: should the database step fail, erasing again finishes the job."""
    workspace_dir(home, workspace_id)  # rejects a malformed id before anything is touched
    with store.session() as session:
        if session.get(Workspace, workspace_id) is None:
            raise not_found("workspace", workspace_id)
    _remove_files(home, workspace_id)
    with store.write_session() as session:
        workspace = session.get(Workspace, workspace_id)
        if workspace is None:
            raise not_found("workspace", workspace_id)
        _erase_rows(session, workspace)
        audit.record(
            session, "workspace.erase", actor, organisation_id=workspace.organisation_id, target=digest(workspace_id)
        )
    store.checkpoint()


def erase_organisation(store: Store, home: Path, organisation_id: str, actor: Actor) -> None:
    """Erases every workspace of the organisation, then the organisation itself."""
    with store.session() as session:
        organisation = session.get(Organisation, organisation_id)
        if organisation is None:
            raise not_found("organisation", organisation_id)
        if organisation.is_platform:
            raise Conflict("The platform organisation cannot be erased")
        workspace_ids = list(session.scalars(select(Workspace.id).where(Workspace.organisation_id == organisation_id)))
    for workspace_id in workspace_ids:
        _remove_files(home, workspace_id)
    with store.write_session() as session:
        for workspace in session.scalars(select(Workspace).where(Workspace.organisation_id == organisation_id)).all():
            _erase_rows(session, workspace)
        session.execute(delete(Organisation).where(Organisation.id == organisation_id))
        audit.record(session, "organisation.erase", actor, target=digest(organisation_id))
    store.checkpoint()
