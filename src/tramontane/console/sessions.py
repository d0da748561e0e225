"""Console sessions: an API key exchanged for a random session id.

The browser holds only the session id, in an HttpOnly, SameSite=Strict cookie. The
key stays in this process's memory, never on disk and never in a log, and is
checked again on every request, so a revoked or expired key ends its sessions at
their next request. Sessions also end on sign-out, after `idle_s` unused and
`lifetime_s` after sign-in, and with the process (a restart signs everyone out)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_IDLE_S = 30 * 60
DEFAULT_LIFETIME_S = 12 * 3600
MAX_SESSIONS = 10_000


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
    # creates another key.
    reveal: dict | None = None


def _digest(session_id: str) -> str:
    # Stored under a digest: a dump of this table would not give usable cookies.
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(
        self,
        *,
        idle_s: float = DEFAULT_IDLE_S,
        lifetime_s: float = DEFAULT_LIFETIME_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.idle_s = idle_s
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, key: str, key_id: str) -> tuple[str, Session]:
        """A new session for `key`: (the id to set in the cookie, the session)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(key, key_id, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._purge(now)
            if len(self._sessions) >= self.max_sessions:  # evict the least recently used
                oldest = min(self._sessions, key=lambda k: self._sessions[k].last_seen)
                del self._sessions[oldest]
            self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session behind a cookie's value, its idle clock restarted; None
        for an unknown, ended or expired one."""
        if not session_id:
            return None
        now = self.clock()
        digest = _digest(session_id)
        with self._lock:
            session = self._sessions.get(digest)
            if session is None:
                return None
            if self._expired(session, now):
                del self._sessions[digest]
                return None
            session.last_seen = now
            return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_digest(session_id), None)

    def end_key(self, key_id: str) -> int:
        """Ends every session of a key; how many there were."""
        with self._lock:
            doomed = [d for d, s in self._sessions.items() if s.key_id == key_id]
            for digest in doomed:
                del self._sessions[digest]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen > self.idle_s or now - session.created > self.lifetime_s

    def _purge(self, now: float) -> None:
        for digest in [d for d, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[digest]


def tokens_match(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
