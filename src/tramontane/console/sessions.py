"""Console sessions: an API key exchanged for a random session id, kept in the
platform's database so that they survive a restart and are shared by every server
process on the same database.

The browser holds only the session id, in an HttpOnly, SameSite=Strict cookie. The
database holds the session under the id's SHA-256 and the API key sealed with
AES-GCM under a key derived from the id itself: the server can read a session's API
key only while the browser presents the cookie, and a copy of the database gives
neither usable cookies nor keys. The key is checked again on every request, so a
revoked or expired key ends its sessions at their next request. Sessions also end
on sign-out, after `idle_s` unused and `lifetime_s` after sign-in."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import JSON, Float, LargeBinary, String, delete, func, select
from sqlalchemy.orm import Mapped, mapped_column

from ..store import Store
from ..store.models import Base

DEFAULT_IDLE_S = 30 * 60
DEFAULT_LIFETIME_S = 12 * 3600
MAX_SESSIONS = 10_000
# A session's last use is written at most this often: not a database write per page.
TOUCH_EVERY_S = 30.0
_NONCE_BYTES = 12


class ConsoleSessionRow(Base):
    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie's session id
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    sealed_key: Mapped[bytes] = mapped_column(LargeBinary)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_s: Mapped[float] = mapped_column(Float)  # wall clock, seconds since the epoch
    last_seen_s: Mapped[float] = mapped_column(Float, index=True)
    flash: Mapped[list[Any]] = mapped_column(JSON, default=list)
    sealed_reveal: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)


@dataclass
class Session:
    key: str  # the API key itself: it authenticates every call the console makes for this session
    key_id: str
    csrf_token: str
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (level, message), shown once
    # A new key's secret between its creation (a POST) and the page that shows it
    # (the GET it redirects to), which takes it: a reload neither shows it again nor
    # creates another key. Sealed like the API key when stored.
    reveal: dict | None = None
    digest: str = ""
    sealer: AESGCM | None = field(default=None, repr=False)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _sealer(session_id: str) -> AESGCM:
    key = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"tramontane console session").derive(
        session_id.encode()
    )
    return AESGCM(key)


def _seal(sealer: AESGCM, plain: bytes, digest: str) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + sealer.encrypt(nonce, plain, digest.encode())


def _open(sealer: AESGCM, sealed: bytes, digest: str) -> bytes:
    return sealer.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], digest.encode())


class SessionStore:
    def __init__(
        self,
        store: Store,
        *,
        idle_s: float = DEFAULT_IDLE_S,
        lifetime_s: float = DEFAULT_LIFETIME_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.idle_s = idle_s
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self.clock = clock

    def create(self, key: str, key_id: str) -> tuple[str, Session]:
        """A new session for `key`: (the id to set in the cookie, the session)."""
        session_id = secrets.token_urlsafe(32)
        digest, sealer, now = _digest(session_id), _sealer(session_id), self.clock()
        session = Session(key, key_id, secrets.token_urlsafe(32), now, now, digest=digest, sealer=sealer)
        with self.store.write_session() as db:
            self._purge(db, now)
            count = db.scalar(select(func.count()).select_from(ConsoleSessionRow)) or 0
            if count >= self.max_sessions:  # evict the least recently used
                oldest = select(ConsoleSessionRow.id).order_by(ConsoleSessionRow.last_seen_s)
                doomed = list(db.scalars(oldest.limit(count - self.max_sessions + 1)))
                db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.id.in_(doomed)))
            db.add(
                ConsoleSessionRow(
                    id=digest,
                    key_id=key_id,
                    sealed_key=_seal(sealer, key.encode(), digest),
                    csrf_token=session.csrf_token,
                    created_s=now,
                    last_seen_s=now,
                    flash=[],
                )
            )
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session behind a cookie's value, its idle clock restarted; None
        for an unknown, ended or expired one."""
        if not session_id:
            return None
        now, digest = self.clock(), _digest(session_id)
        with self.store.session() as db:
            row = db.get(ConsoleSessionRow, digest)
            if row is None:
                return None
            db.expunge(row)
        if now - row.last_seen_s > self.idle_s or now - row.created_s > self.lifetime_s:
            self._delete(ConsoleSessionRow.id == digest)
            return None
        sealer = _sealer(session_id)
        key = _open(sealer, row.sealed_key, digest).decode()
        reveal = json.loads(_open(sealer, row.sealed_reveal, digest)) if row.sealed_reveal else None
        if now - row.last_seen_s >= TOUCH_EVERY_S:
            with self.store.write_session() as db:
                touched = db.get(ConsoleSessionRow, digest)
                if touched is not None:
                    touched.last_seen_s = now
        flash = [(level, message) for level, message in row.flash or []]
        return Session(key, row.key_id, row.csrf_token, row.created_s, now, flash, reveal, digest, sealer)

    def save(self, session: Session) -> None:
        """Stores what a request changed in `session`: its flash messages and reveal."""
        assert session.sealer is not None
        reveal = None
        if session.reveal is not None:
            reveal = _seal(session.sealer, json.dumps(session.reveal).encode(), session.digest)
        with self.store.write_session() as db:
            row = db.get(ConsoleSessionRow, session.digest)
            if row is not None:
                row.flash = [list(item) for item in session.flash]
                row.sealed_reveal = reveal

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._delete(ConsoleSessionRow.id == _digest(session_id))

    def end_key(self, key_id: str) -> int:
        """Ends every session of a key; how many there were."""
        return self._delete(ConsoleSessionRow.key_id == key_id)

    def __len__(self) -> int:
        with self.store.session() as db:
            return db.scalar(select(func.count()).select_from(ConsoleSessionRow)) or 0

    def _delete(self, where: Any) -> int:
        with self.store.write_session() as db:
            return db.execute(delete(ConsoleSessionRow).where(where)).rowcount or 0

    def _purge(self, db: Any, now: float) -> None:
        expired = (ConsoleSessionRow.last_seen_s < now - self.idle_s) | (
            ConsoleSessionRow.created_s < now - self.lifetime_s
        )
        db.execute(delete(ConsoleSessionRow).where(expired))


def tokens_match(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
