"""Authentication: from an `Authorization` header to a Principal, or a 401.

Nothing is cached: every request reads the key's row (one indexed lookup, run
straight on the driver), so revocation and expiry take effect on the very next
request, in every process sharing the database. Every failure is audited under
the key's public id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import bindparam, select

from ..store import ApiKey, Organisation, Store, Workspace
from ..store.types import utcnow
from . import audit
from .audit import ANONYMOUS, Actor
from .capabilities import Capability, deserialise_capabilities
from ..errors import Forbidden, Unauthorized
from .keys import hash_secret, parse_key, public_key_id, secret_matches
from .principal import KEY_PREFIX, LIMIT_FIELDS, Limits, Principal

# Prepared once per store, with the key id as a parameter.
_LOOKUP = (
    select(
        ApiKey.id,
        ApiKey.workspace_id,
        ApiKey.secret_hash,
        ApiKey.capabilities,
        ApiKey.expires_at,
        ApiKey.revoked_at,
        *(getattr(ApiKey, name) for name in LIMIT_FIELDS),
        Workspace.organisation_id,
        *(getattr(Workspace, name).label(f"workspace_{name}") for name in LIMIT_FIELDS),
        Workspace.request_log_retention_days,
        Workspace.scheduling_weight,
        Organisation.is_platform,
    )
    .join(Workspace, Workspace.id == ApiKey.workspace_id)
    .join(Organisation, Organisation.id == Workspace.organisation_id)
    .where(ApiKey.id == bindparam("key_id"))
)

_BEARER_HINT = "Send it as 'Authorization: Bearer tmt_...'."


@dataclass(frozen=True)
class Rejection:
    """Why a key was refused: the audit entry's reason and the 401's body."""

    reason: str
    key_id: str | None
    message: str
    code: str
    row: Any = None  # the key's row, when the key exists


class Authenticator:
    def __init__(self, store: Store, pepper: bytes):
        self.store = store
        self.pepper = pepper
        # Compared against when the key id is unknown, so that a miss costs as much
        # as a wrong secret and timing does not tell which ids exist.
        self._decoy_hash = hash_secret(pepper, "0" * 16, "decoy")
        self._lookup = store.prepare(_LOOKUP)

    def authenticate(self, authorization: str | None, *, where: str | None = None) -> Principal:
        """The caller behind `Authorization: Bearer tmt_...`; raises a 401 (audited)
        for a missing, malformed, unknown, wrong, revoked or expired key.
        `where` (say "POST /v1/chat/completions") goes into the audit entry."""
        verdict = self.verify(authorization)
        if isinstance(verdict, Rejection):
            self.reject(verdict, where)
        return verdict

    def verify(self, authorization: str | None) -> Principal | Rejection:
        """`authenticate` without its side effect: one indexed read, no write, so
        that the event loop can run it inline; a Rejection goes to `reject`."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Rejection("missing", None, f"You didn't provide an API key. {_BEARER_HINT}", "missing_api_key")
        parsed = parse_key(token)
        if parsed is None:
            return Rejection("malformed", public_key_id(token), "Incorrect API key provided", "invalid_api_key")
        key_id, secret = parsed
        row = self._lookup.first(key_id=key_id)
        if row is None:
            secret_matches(self.pepper, key_id, secret, self._decoy_hash)
            return Rejection("unknown_key", key_id, "Incorrect API key provided", "invalid_api_key")
        if not secret_matches(self.pepper, key_id, secret, row.secret_hash):
            return Rejection("wrong_secret", key_id, "Incorrect API key provided", "invalid_api_key", row)
        # The secret is right, so the caller holds the key: telling why it no
        # longer works gives nothing away.
        if row.revoked_at is not None:
            return Rejection("revoked", key_id, "This API key has been revoked", "api_key_revoked", row)
        if row.expires_at is not None and row.expires_at <= utcnow():
            return Rejection("expired", key_id, "This API key has expired", "api_key_expired", row)
        return _principal(row)

    def verify_key_id(self, key_id: str) -> Principal | Rejection:
        """`verify` for a key the caller proved it holds some other way (a link
        the platform signed under that key): the key must still exist, be neither
        revoked nor expired, as on every request."""
        row = self._lookup.first(key_id=key_id)
        if row is None:
            return Rejection("unknown_key", key_id, "The API key behind this link no longer exists", "invalid_api_key")
        if row.revoked_at is not None:
            return Rejection("revoked", key_id, "The API key behind this link has been revoked", "api_key_revoked", row)
        if row.expires_at is not None and row.expires_at <= utcnow():
            return Rejection("expired", key_id, "The API key behind this link has expired", "api_key_expired", row)
        return _principal(row)

    def key_principal(self, key_id: str) -> Principal | None:
        """The principal of key `key_id` whatever its state (None once erased), for
        work the key started earlier and that runs without it: batch jobs."""
        row = self._lookup.first(key_id=key_id)
        return _principal(row) if row is not None else None

    def reject(self, rejection: Rejection, where: str | None) -> NoReturn:
        """Audits a failed authentication under the key's public id and raises its 401."""
        row = rejection.row
        with self.store.write_session() as session:
            audit.record(
                session,
                "auth.failure",
                Actor(f"{KEY_PREFIX}{rejection.key_id}") if rejection.key_id else ANONYMOUS,
                outcome="failure",
                organisation_id=row.organisation_id if row is not None else None,
                workspace_id=row.workspace_id if row is not None else None,
                target=where,
                details={"reason": rejection.reason},
            )
        raise Unauthorized(rejection.message, code=rejection.code)

    def authorize(self, principal: Principal, capability: Capability, *, where: str | None = None) -> None:
        """Raises a 403 (audited) unless the key holds `capability`."""
        if principal.can(capability):
            return
        with self.store.write_session() as session:
            audit.record(
                session,
                "auth.denied",
                Actor(principal.key_prefix),
                outcome="denied",
                organisation_id=principal.organisation_id,
                workspace_id=principal.workspace_id,
                target=where,
                details={"missing_capability": capability.value},
            )
        raise Forbidden(f"This API key lacks the '{capability.value}' capability", code="insufficient_capability"
        )


def _principal(row: Any) -> Principal:
    """The Principal of a `_LOOKUP` row."""
    capabilities = deserialise_capabilities(row.capabilities)
    return Principal(
        key_id=row.id,
        workspace_id=row.workspace_id,
        organisation_id=row.organisation_id,
        capabilities=capabilities,
        platform_admin=row.is_platform and Capability.ADMIN in capabilities,
        key_limits=Limits(**{name: getattr(row, name) for name in LIMIT_FIELDS}),
        workspace_limits=Limits(**{name: getattr(row, f"workspace_{name}") for name in LIMIT_FIELDS}),
        request_log_retention_days=row.request_log_retention_days,
        scheduling_weight=row.scheduling_weight,
    )
