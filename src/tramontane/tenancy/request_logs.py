"""Opt-in storage of inference requests and their responses.

Nothing is stored unless a workspace sets a retention period. Entries are
written by a BackgroundWriter, so that storing a body never delays a response.
The same thread deletes expired rows, a bounded batch per transaction; reads
skip them meanwhile.

Bodies are never logged (see background_writer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from ..store import RequestLog, Store
from ..store.types import utcnow
from .background_writer import BackgroundWriter

log = logging.getLogger(__name__)

MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 3650

_INSERT = insert(RequestLog)


@dataclass(frozen=True)
class RequestLogEntry:
    workspace_id: str
    api_key_id: str
    request_id: str
    endpoint: str
    model: str
    created_at: datetime
    completed_at: datetime
    retention_days: int
    request: dict[str, Any]
    response: dict[str, Any] | None

    def row(self) -> dict[str, Any]:
        values = asdict(self)
        values["expires_at"] = self.created_at + timedelta(days=values.pop("retention_days"))
        return values


class RequestLogWriter(BackgroundWriter[RequestLogEntry]):
    """Stores queued entries and purges expired ones."""

    def __init__(
        self,
        store: Store,
        *,
        capacity: int = 1024,
        batch_size: int = 64,
        purge_interval_s: float = 60.0,
        purge_batch_size: int = 500,
    ):
        super().__init__(
            store, "request logs", capacity=capacity, batch_size=batch_size, housekeeping_interval_s=purge_interval_s
        )
        self.purge_batch_size = purge_batch_size

    def purge_expired(self) -> int:
        """Deletes expired rows, `purge_batch_size` per transaction (so that the
        write lock is never held long), until none is left; returns how many."""
        purged = 0
        while True:
            expired = (
                select(RequestLog.id).where(RequestLog.expires_at <= utcnow()).limit(self.purge_batch_size)
            ).scalar_subquery()
            with self.store.write() as connection:
                deleted = connection.execute(delete(RequestLog).where(RequestLog.id.in_(expired))).rowcount
            purged += deleted
            if deleted < self.purge_batch_size:
                return purged

    def insert(self, connection: Connection, entries: Sequence[RequestLogEntry]) -> None:
        connection.execute(_INSERT, [entry.row() for entry in entries])

    def housekeeping(self) -> None:
        try:
            purged = self.purge_expired()
        except Exception as exc:
            log.error("could not purge expired request logs: %s", type(exc).__name__)
            return
        if purged:
            log.info("purged %d expired request logs", purged)


def list_logs(store: Store, workspace_id: str, *, before_id: int | None, limit: int) -> list[RequestLog]:
    """The workspace's unexpired logs, newest first, older than `before_id` if given."""
    statement = (
        select(RequestLog)
        .where(RequestLog.workspace_id == workspace_id, RequestLog.expires_at > utcnow())
        .order_by(RequestLog.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        statement = statement.where(RequestLog.id < before_id)
    with store.session() as session:
        return list(session.scalars(statement))


def find_log(store: Store, workspace_id: str, request_id: str) -> RequestLog | None:
    """The workspace's newest unexpired log of `request_id` (clients may reuse an id)."""
    statement = (
        select(RequestLog)
        .where(
            RequestLog.workspace_id == workspace_id,
            RequestLog.request_id == request_id,
            RequestLog.expires_at > utcnow(),
        )
        .order_by(RequestLog.id.desc())
        .limit(1)
    )
    with store.session() as session:
        return session.scalar(statement)
