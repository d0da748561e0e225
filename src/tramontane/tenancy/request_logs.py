"""Opt-in storage of inference requests and their responses.

Nothing is stored unless a workspace sets a retention period. Entries are
written by one background thread, so that storing a body never delays a
response: `submit` only appends to a bounded queue. When the queue is full (the
database cannot keep up) or a write fails, the entry is dropped and counted in
`dropped`, which the server exports to Prometheus. The same thread deletes
expired rows, a bounded batch per transaction; reads skip them meanwhile.

Bodies are never logged: a failed write is reported by its error's class only
(a database error's text would quote the row's parameters).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from ..store import RequestLog, Store
from ..store.types import utcnow

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


_STOP = object()


class RequestLogWriter:
    """A queue of entries and the thread that stores them and purges expired ones."""

    def __init__(
        self,
        store: Store,
        *,
        capacity: int = 1024,
        batch_size: int = 64,
        purge_interval_s: float = 60.0,
        purge_batch_size: int = 500,
    ):
        self.store = store
        self.batch_size = batch_size
        self.purge_interval_s = purge_interval_s
        self.purge_batch_size = purge_batch_size
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Starts the thread (submitting starts it too); idempotent."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
                self._thread.start()

    def submit(self, entry: RequestLogEntry) -> bool:
        """Queues `entry` without waiting; False (and counted) if the queue is full."""
        self.start()
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.count_dropped()
            return False
        return True

    def flush(self) -> None:
        """Waits until every entry submitted so far has been written or dropped."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Writes what is queued, then stops the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

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

    def count_dropped(self, count: int = 1) -> None:
        """Counts entries lost before reaching the queue (say, a response that could not be built)."""
        with self._lock:
            self.dropped += count

    def _run(self) -> None:
        next_purge = time.monotonic()
        while True:
            try:
                first = self._queue.get(timeout=max(0.0, next_purge - time.monotonic()))
            except queue.Empty:
                self._purge()
                next_purge = time.monotonic() + self.purge_interval_s
                continue
            taken = [first]
            while len(taken) < self.batch_size:
                try:
                    taken.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write([item for item in taken if item is not _STOP])
            for _ in taken:
                self._queue.task_done()
            if any(item is _STOP for item in taken):
                return

    def _write(self, entries: Sequence[RequestLogEntry]) -> None:
        if not entries:
            return
        try:
            with self.store.write() as connection:
                connection.execute(_INSERT, [entry.row() for entry in entries])
        except IntegrityError:
            # Most likely a workspace or key erased while its entry waited: store
            # the others one by one; the erased one must not come back anyway.
            for entry in entries:
                self._write_one(entry)
        except Exception as exc:
            log.error("could not store %d request logs: %s", len(entries), type(exc).__name__)
            self.count_dropped(len(entries))

    def _write_one(self, entry: RequestLogEntry) -> None:
        try:
            with self.store.write() as connection:
                connection.execute(_INSERT, entry.row())
        except Exception as exc:
            log.warning("could not store a request log of workspace %s: %s", entry.workspace_id, type(exc).__name__)
            self.count_dropped(1)

    def _purge(self) -> None:
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
