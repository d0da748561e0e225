"""Leases with fencing tokens, as rows of the database: which of the gateways
sharing it runs the control plane (the row named "control"), or runs a batch
job (a row per job).

Every gateway (`tramontane up`) contends for the one row named "control". A
gateway takes it when the row is free or its lease has run out, which bumps its
`token`; the holder renews it well before it runs out. Expiry is judged by the
database's clock, never a gateway's, so clock skew between hosts does not
matter. The holder also stops acting on its own when it could not renew in
time (measured on its own monotonic clock from the start of its last successful
renewal), which happens before the database lets anyone else take the row.

That alone does not stop a leader that was paused or cut off and comes back
believing it still leads. The token does: every write the control plane (or a
batch job's runner) makes runs `Lease.fence` in its own transaction, which reads
the row under a share lock and refuses the write unless the token is still the
writer's. A takeover
updates that row, so it waits for such a write to commit, and every write after
it sees the new token (`Fenced`). On SQLite every write transaction holds the
database's write lock, which serialises them the same way.

Takeover time is bounded by `ttl_s` plus one `poll_s`: with the defaults (3 s,
0.25 s), a leader killed outright is replaced within about 3.25 s."""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, String, delete, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from ..errors import Unavailable
from .database import Store
from .models import Base

CONTROL = "control"
DEFAULT_TTL_S = 3.0
DEFAULT_POLL_S = 0.25


class LeaseRow(Base):
    __tablename__ = "control_leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    # The gateway holding it: a random id per process, so a restarted gateway
    # is a new contender and never mistakes an old lease for its own.
    holder: Mapped[str] = mapped_column(String(128))
    # Bumped at every change of holder: the fencing token.
    token: Mapped[int] = mapped_column(Integer)
    # The database's clock, in seconds since the epoch.
    expires_at: Mapped[float] = mapped_column(Float)
    # Where the holder serves the API, for the other gateways to forward to.
    address: Mapped[str] = mapped_column(String(500))


class Fenced(Unavailable):
    """A write by a lease's former holder, after another took the lease."""

    def __init__(self, message: str = "This gateway no longer leads the control plane; retry") -> None:
        super().__init__(message, code="not_leader", retry_after_s=1)


@dataclass(frozen=True)
class Leader:
    holder: str
    token: int
    address: str


def new_holder_id() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(6)}"


def db_now(store: Store) -> Any:
    """The database's current time in epoch seconds, as an SQL expression."""
    if store.is_sqlite:
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)")
    return literal_column("extract(epoch from clock_timestamp())")


class Lease:
    """One gateway's side of the lease named `name`. Every method is one short
    transaction, synchronous: call them off the event loop."""

    def __init__(self, store: Store, address: str, *, name: str = CONTROL, holder: str | None = None,
                 ttl_s: float = DEFAULT_TTL_S):
        self.store = store
        self.address = address
        self.name = name
        self.holder = holder or new_holder_id()
        self.ttl_s = ttl_s
        self.token: int | None = None  # set while this gateway holds the lease

    def try_acquire(self) -> int | None:
        """Takes the lease if it is free or has run out: the new fencing token,
        else None."""
        now = db_now(self.store)
        values = {
            "name": self.name, "holder": self.holder, "token": 1,
            "expires_at": now + self.ttl_s, "address": self.address,
        }
        insert = pg_insert(LeaseRow) if not self.store.is_sqlite else sqlite_insert(LeaseRow)
        statement = insert.values(**values).on_conflict_do_update(
            index_elements=[LeaseRow.name],
            set_={
                "holder": self.holder, "token": LeaseRow.token + 1,
                "expires_at": now + self.ttl_s, "address": self.address,
            },
            where=LeaseRow.expires_at < now,
        ).returning(LeaseRow.token)
        with self.store.write() as connection:
            token = connection.execute(statement).scalar()
        self.token = token
        return token

    def renew(self) -> bool:
        """Extends the lease this gateway holds; False when it no longer holds it."""
        if self.token is None:
            return False
        now = db_now(self.store)
        statement = (
            update(LeaseRow)
            .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder, LeaseRow.token == self.token)
            .values(expires_at=now + self.ttl_s)
            .returning(LeaseRow.token)
        )
        with self.store.write() as connection:
            held = connection.execute(statement).scalar() is not None
        if not held:
            self.token = None
        return held

    def release(self) -> None:
        """Lets another gateway take over at once (a clean shutdown)."""
        if self.token is None:
            return
        statement = (
            update(LeaseRow)
            .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder, LeaseRow.token == self.token)
            .values(expires_at=0.0)
        )
        with self.store.write() as connection:
            connection.execute(statement)
        self.token = None

    def drop(self) -> None:
        """Deletes the row of a lease this gateway holds and needs no more (a
        finished job's). Only for leases whose subject is done: a row created
        again would start its tokens over."""
        if self.token is None:
            return
        statement = delete(LeaseRow).where(
            LeaseRow.name == self.name, LeaseRow.holder == self.holder, LeaseRow.token == self.token
        )
        with self.store.write() as connection:
            connection.execute(statement)
        self.token = None

    def leader(self) -> Leader | None:
        """The gateway holding an unexpired lease, if any."""
        now = db_now(self.store)
        statement = select(LeaseRow.holder, LeaseRow.token, LeaseRow.address).where(
            LeaseRow.name == self.name, LeaseRow.expires_at >= now
        )
        with self.store.read() as connection:
            row = connection.execute(statement).first()
        return Leader(row.holder, row.token, row.address) if row is not None else None

    def fence(self, session: Session, token: int | None) -> None:
        """Raises `Fenced` unless `token` is still the lease's, holding the row
        (share lock) until `session`'s transaction ends."""
        statement = select(LeaseRow.token).where(LeaseRow.name == self.name).with_for_update(read=True)
        if session.scalar(statement) != token:
            raise Fenced()
