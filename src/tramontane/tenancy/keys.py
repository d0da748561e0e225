"""API keys: `tmt_<id>_<secret>`.

The id (16 hex digits) is public: lists, logs and the audit log show keys as
`tmt_<id>`. The secret (256 random bits) is shown once, at creation, and stored
only as HMAC-SHA256(pepper, "<id>:<secret>"). A slow password hash would add
nothing here: the secret is random, not chosen by a person, so it cannot be
guessed from a dictionary, and checking it stays within microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..store import ApiKey, Setting, Store, Workspace
from ..store.types import utcnow
from . import audit
from .audit import SYSTEM, Actor
from .capabilities import ALL_CAPABILITIES, Capability, serialise_capabilities
from .directory import create_organisation, create_workspace
from .principal import KEY_PREFIX, NO_LIMITS, Limits

_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
BOOTSTRAP_SETTING = "admin_key_issued"
PLATFORM_ORGANISATION = "platform"
DEFAULT_WORKSPACE = "default"


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secret}"


def parse_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, _, secret = token[len(KEY_PREFIX) :].partition("_")
    if not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id, secret


def public_key_id(token: str) -> str | None:
    """The id part of something shaped like a key, for auditing a failed attempt;
    only ever the public part, and only when it has the shape of one."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id = token[len(KEY_PREFIX) :].partition("_")[0]
    return key_id if _KEY_ID.fullmatch(key_id) else None


def hash_secret(pepper: bytes, key_id: str, secret: str) -> str:
    return hmac.new(pepper, f"{key_id}:{secret}".encode(), hashlib.sha256).hexdigest()


def secret_matches(pepper: bytes, key_id: str, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(pepper, key_id, secret), stored_hash)


KeyStatus = Literal["active", "revoked", "expired"]


def key_status(key: ApiKey, now: datetime) -> KeyStatus:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    # The whole key; exists only in this object, so show it once and drop it.
    plaintext: str


def create_key(
    session: Session,
    pepper: bytes,
    workspace: Workspace,
    *,
    name: str,
    capabilities: frozenset[Capability],
    actor: Actor,
    expires_at: datetime | None = None,
    limits: Limits = NO_LIMITS,
) -> CreatedKey:
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    key = ApiKey(
        id=key_id,
        workspace_id=workspace.id,
        name=name,
        secret_hash=hash_secret(pepper, key_id, secret),
        capabilities=serialise_capabilities(capabilities),
        created_by=actor.label,
        expires_at=expires_at,
        **limits.as_dict(),
    )
    session.add(key)
    audit.record(
        session,
        "key.create",
        actor,
        organisation_id=workspace.organisation_id,
        workspace_id=workspace.id,
        target=f"{KEY_PREFIX}{key_id}",
        details={
            "name": name,
            "capabilities": sorted(c.value for c in capabilities),
            "expires_at": expires_at.isoformat() if expires_at else None,
            "limits": limits.as_dict(),
        },
    )
    session.flush()
    return CreatedKey(key, format_key(key_id, secret))


def revoke_key(session: Session, key: ApiKey, organisation_id: str, actor: Actor) -> ApiKey:
    """Revokes at once: authentication reads the key's row on every request."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        audit.record(
            session,
            "key.revoke",
            actor,
            organisation_id=organisation_id,
            workspace_id=key.workspace_id,
            target=f"{KEY_PREFIX}{key.id}",
        )
    return key


def bootstrap_admin_key(store: Store, pepper: bytes) -> str | None:
    """On the first start, creates the platform organisation, its default workspace
    and a key holding every capability, and returns that key; afterwards None.
    Safe when several processes start at once: exactly one gets the key."""
    try:
        with store.write_session() as session:
            if session.get(Setting, BOOTSTRAP_SETTING) is not None:
                return None
            session.add(Setting(name=BOOTSTRAP_SETTING, value=utcnow().isoformat()))
            # Two PostgreSQL servers racing here: the loser fails this flush.
            session.flush()
            organisation = create_organisation(session, PLATFORM_ORGANISATION, SYSTEM, is_platform=True)
            workspace = create_workspace(session, organisation, DEFAULT_WORKSPACE, SYSTEM)
            created = create_key(
                session, pepper, workspace, name="bootstrap admin", capabilities=ALL_CAPABILITIES, actor=SYSTEM
            )
            return created.plaintext
    except IntegrityError:
        return None
