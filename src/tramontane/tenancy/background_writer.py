"""One thread that stores what requests hand it, in batches, off the request path.

Submitting never waits: it appends to a bounded queue. When the queue is full
(the database cannot keep up) or a write fails, the items are dropped and
counted in `dropped`, which the server exports to Prometheus. Batching turns a
transaction per request into one per batch, which is what lets a busy server's
bookkeeping keep up with SQLite's single writer.

A failed write is reported by its error's class only: a database error's text
would quote the row's parameters.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from ..store import Store

log = logging.getLogger(__name__)

Item = TypeVar("Item")

_STOP = object()


class BackgroundWriter(Generic[Item]):
    """A bounded queue and the daemon thread that drains it into `store`: up to
    `batch_size` items at a time go to `insert`, in one transaction; every
    `housekeeping_interval_s` the thread also runs `housekeeping` (such as purging
    expired rows). `noun` names the items in log lines."""

    def __init__(
        self,
        store: Store,
        noun: str,
        *,
        capacity: int,
        batch_size: int,
        housekeeping_interval_s: float | None = None,
    ):
        self.store = store
        self.noun = noun
        self.batch_size = batch_size
        self.housekeeping_interval_s = housekeeping_interval_s
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def insert(self, connection: Connection, items: Sequence[Item]) -> None:
        """Adds `items` in the writer's transaction."""
        raise NotImplementedError

    def housekeeping(self) -> None:
        """Runs on the writer thread every `housekeeping_interval_s`."""

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Starts the thread (submitting starts it too); idempotent."""
        with self._lock:
            if self._thread is None:
                name = f"{self.noun.replace(' ', '-')}-writer"
                self._thread = threading.Thread(target=self._run, name=name, daemon=True)
                self._thread.start()

    def submit(self, item: Item) -> bool:
        """Queues `item` without waiting; False (and counted) if the queue is full."""
        self.start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.count_dropped()
            return False
        return True

    def flush(self) -> None:
        """Waits until every item submitted so far has been written or dropped."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Writes what is queued, then stops the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def count_dropped(self, count: int = 1) -> None:
        """Counts items lost (say, a response that could not be built before submitting)."""
        with self._lock:
            self.dropped += count

    def _run(self) -> None:
        interval = self.housekeeping_interval_s
        next_housekeeping = time.monotonic()
        while True:
            if interval is not None and time.monotonic() >= next_housekeeping:
                self.housekeeping()  # also under steady traffic, not only when the queue is empty
                next_housekeeping = time.monotonic() + interval
            timeout = None if interval is None else max(0.0, next_housekeeping - time.monotonic())
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            taken = [first]
            while len(taken) < self.batch_size:
                try:
                    taken.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in taken if item is not _STOP]
            if items:
                self._write(items)
            for _ in taken:
                self._queue.task_done()
            if len(items) < len(taken):
                return

    def _write(self, items: Sequence[Item]) -> None:
        try:
            with self.store.write() as connection:
                self.insert(connection, items)
        except IntegrityError:
            # Most likely a workspace or key erased while its item waited: store
            # the others one by one; the erased one must not come back anyway.
            for item in items:
                self._write_one(item)
        except Exception as exc:
            log.error("could not store %d %s: %s", len(items), self.noun, type(exc).__name__)
            self.count_dropped(len(items))

    def _write_one(self, item: Item) -> None:
        try:
            with self.store.write() as connection:
                self.insert(connection, [item])
        except Exception as exc:
            log.warning("could not store one of %s: %s", self.noun, type(exc).__name__)
            self.count_dropped(1)
