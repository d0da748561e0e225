"""Rate limits, concurrency limits and token budgets, kept in the shared database so
every server process sharing it enforces the same counts.

Windows are fixed: a UTC minute for requests and tokens per minute, a UTC
calendar month for the token budget. A client can thus get up to twice a
per-minute limit through across a minute boundary; in exchange a check is one
atomic statement and `Retry-After` is exact (the time to the window's end).

Atomicity. A request counter is bumped by a single
`INSERT ... ON CONFLICT DO UPDATE SET value = value + 1 WHERE value + 1 <= limit
RETURNING value`: no row back means the limit is reached. PostgreSQL evaluates
the WHERE on the latest row version under the row lock, so two processes can
never both take the last slot; on SQLite the whole admission runs under the
write lock (BEGIN IMMEDIATE). Key and workspace checks share one transaction,
so a refusal by either rolls back the other's increment.

Tokens are known only once a request is done, so token limits are checked on
admission against the tokens already recorded (`consume` adds them): a request
is refused once the minute's or month's total has reached the limit, and one
request can overshoot it by its own size.

Besides those database-wide limits, each server process bounds the requests
of each workspace it serves at once, and queues a few more (`WorkspaceGate`),
with defaults its operator sets (`AdmissionLimits`): a workspace without its
own concurrency limit cannot take a whole server, and a burst waits a moment
in line instead of failing at once.

Concurrency is counted as lease rows, one per request in flight, with an
expiry so that a crashed process cannot hold slots for ever. Admission locks
the rows of the key and/or workspace that has a concurrency limit (FOR NO KEY
UPDATE, which does not block the foreign-key checks of concurrent inserts, so
it cannot deadlock with them), counts their unexpired leases and adds its own.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..errors import Limited
from ..store import ApiKey, RateCounter, RequestLease, Store, Workspace
from ..errors import Limited
from .principal import Limits, Principal

REQUESTS_PER_MINUTE = "requests/min"
TOKENS_PER_MINUTE = "tokens/min"
TOKENS_PER_MONTH = "tokens/month"
DEFAULT_LEASE_TTL_S = 900.0
# Nothing tells when a slot frees up; a second is a sensible pause before retrying.
_CONCURRENCY_RETRY_S = 1.0


def minute_window(now: float) -> tuple[int, int]:
    start = int(now // 60 * 60)
    return start, start + 60


def month_window(now: float) -> tuple[int, int]:
    start = datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return int(start.timestamp()), int(end.timestamp())


def _subjects(principal: Principal) -> list[tuple[str, str, Limits]]:
    """The key first, then its workspace: every transaction locks rows in this order."""
    return [
        (f"key:{principal.key_id}", "API key", principal.key_limits),
        (f"workspace:{principal.workspace_id}", "workspace", principal.workspace_limits),
    ]


class Limiter:
    def __init__(
        self, store: Store, *, lease_ttl_s: float = DEFAULT_LEASE_TTL_S, clock: Callable[[], float] = time.time
    ):
        self.store = store
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        # (subject, metric) -> the window whose predecessors this process already deleted.
        self._swept: dict[tuple[str, str], int] = {}
        # Statements are built once: constructing them costs more than running them.
        upsert = (sqlite_insert if store.is_sqlite else pg_insert)(RateCounter)
        counter_key = [RateCounter.subject, RateCounter.metric, RateCounter.window_start]
        self._take = upsert.on_conflict_do_update(
            index_elements=counter_key,
            set_={"value": RateCounter.value + upsert.excluded.value},
            where=RateCounter.value + upsert.excluded.value <= bindparam("limit"),
        ).returning(RateCounter.value)
        self._add = upsert.on_conflict_do_update(
            index_elements=counter_key, set_={"value": RateCounter.value + upsert.excluded.value}
        )
        self._read = select(RateCounter.value).where(
            RateCounter.subject == bindparam("subject"),
            RateCounter.metric == bindparam("metric"),
            RateCounter.window_start == bindparam("window_start"),
        )
        self._sweep_counters = delete(RateCounter).where(
            RateCounter.subject == bindparam("subject"),
            RateCounter.metric == bindparam("metric"),
            RateCounter.window_start < bindparam("window_start"),
        )
        # FOR NO KEY UPDATE: serialises admissions without blocking foreign-key checks.
        self._lock_key = select(ApiKey.id).where(ApiKey.id == bindparam("key_id")).with_for_update(key_share=True)
        self._lock_workspace = (
            select(Workspace.id).where(Workspace.id == bindparam("workspace_id")).with_for_update(key_share=True)
        )
        active = select(func.count()).select_from(RequestLease).where(RequestLease.expires_at >= bindparam("now"))
        self._count_key_leases = active.where(RequestLease.api_key_id == bindparam("key_id"))
        self._count_workspace_leases = active.where(RequestLease.workspace_id == bindparam("workspace_id"))
        self._sweep_leases = delete(RequestLease).where(
            RequestLease.workspace_id == bindparam("workspace_id"), RequestLease.expires_at < bindparam("now")
        )
        self._insert_lease = insert(RequestLease)
        self._release = delete(RequestLease).where(RequestLease.id == bindparam("lease_id"))

    @staticmethod
    def applies_to(principal: Principal) -> bool:
        """Whether admitting `principal` touches the database at all."""
        return not (principal.key_limits.unlimited and principal.workspace_limits.unlimited)

    def admit(self, principal: Principal) -> str | None:
        """Counts a new request against the key's and workspace's limits, or raises a
        429. Returns the concurrency lease to `release` when the request ends (None
        when no concurrency limit applies)."""
        if not self.applies_to(principal):
            return None
        subjects = _subjects(principal)
        now = self.clock()
        with self.store.write() as connection:
            for subject, label, limits in subjects:
                self._check_rates(connection, principal.workspace_id, subject, label, limits, now)
            if principal.key_limits.max_concurrent_requests is None and (
                principal.workspace_limits.max_concurrent_requests is None
            ):
                return None
            return self._take_lease(connection, principal, now)

    def release(self, lease_id: str | None) -> None:
        if lease_id is not None:
            with self.store.write() as connection:
                connection.execute(self._release, {"lease_id": lease_id})

    def consume(self, connection: Connection, used: Sequence[tuple[Principal, int]]) -> None:
        """Adds finished requests' tokens (principal, tokens) to the per-minute and
        monthly totals of their keys and workspaces (always, so that a limit set
        mid-month sees earlier use): one row per counter, however many requests."""
        now = self.clock()
        windows = ((TOKENS_PER_MINUTE, minute_window(now)[0]), (TOKENS_PER_MONTH, month_window(now)[0]))
        # Keyed by (subject, metric, window, workspace): a subject's workspace is fixed.
        totals: dict[tuple[str, str, int, str], int] = {}
        for principal, tokens in used:
            for subject, _, _ in _subjects(principal):
                for metric, window in windows:
                    counter = (subject, metric, window, principal.workspace_id)
                    totals[counter] = totals.get(counter, 0) + tokens
        # Sorted ("key:" before "workspace:", as everywhere): writers in several
        # processes sharing PostgreSQL lock counter rows in one order, never in a cycle.
        counters = sorted(totals)
        rows = [
            {"subject": s, "metric": m, "window_start": w, "value": totals[s, m, w, ws], "workspace_id": ws}
            for s, m, w, ws in counters
        ]
        connection.execute(self._add, rows)
        for subject, metric, window, _ in counters:
            self._sweep(connection, subject, metric, window)

    def _check_rates(
        self, connection: Connection, workspace_id: str, subject: str, label: str, limits: Limits, now: float
    ) -> None:
        if limits.requests_per_minute is not None:
            window, end = minute_window(now)
            if not self._increment(connection, workspace_id, subject, window, limits.requests_per_minute):
                raise Limited(f"Rate limit reached for this {label}: {limits.requests_per_minute} requests per minute",
                    code="rate_limit_exceeded",
                    retry_after_s=end - now,
                )
            self._sweep(connection, subject, REQUESTS_PER_MINUTE, window)
        if limits.tokens_per_minute is not None:
            window, end = minute_window(now)
            if self._value(connection, subject, TOKENS_PER_MINUTE, window) >= limits.tokens_per_minute:
                raise Limited(f"Rate limit reached for this {label}: {limits.tokens_per_minute} tokens per minute",
                    code="rate_limit_exceeded",
                    retry_after_s=end - now,
                )
        if limits.monthly_token_budget is not None:
            window, end = month_window(now)
            if self._value(connection, subject, TOKENS_PER_MONTH, window) >= limits.monthly_token_budget:
                raise Limited(f"This {label}'s monthly budget of {limits.monthly_token_budget} tokens is spent",
                    code="insufficient_quota",
                    retry_after_s=end - now,
                )

    def _increment(self, connection: Connection, workspace_id: str, subject: str, window: int, limit: int) -> bool:
        if limit < 1:
            return False
        row = {
            "subject": subject,
            "metric": REQUESTS_PER_MINUTE,
            "window_start": window,
            "value": 1,
            "workspace_id": workspace_id,
            "limit": limit,
        }
        return connection.execute(self._take, row).first() is not None

    def _value(self, connection: Connection, subject: str, metric: str, window: int) -> int:
        value = connection.scalar(self._read, {"subject": subject, "metric": metric, "window_start": window})
        return value or 0

    def _sweep(self, connection: Connection, subject: str, metric: str, window: int) -> None:
        """Deletes a subject's past windows, once per new window and process."""
        if self._swept.get((subject, metric)) == window:
            return
        connection.execute(self._sweep_counters, {"subject": subject, "metric": metric, "window_start": window})
        self._swept[(subject, metric)] = window

    def _take_lease(self, connection: Connection, principal: Principal, now: float) -> str:
        key_limit = principal.key_limits.max_concurrent_requests
        workspace_limit = principal.workspace_limits.max_concurrent_requests
        moment = datetime.fromtimestamp(now, UTC)
        params = {"key_id": principal.key_id, "workspace_id": principal.workspace_id, "now": moment}
        # Key before workspace, as everywhere, so that two admissions never wait on
        # each other in a cycle. SQLite needs no row locks: BEGIN IMMEDIATE already
        # made this transaction the only writer.
        if key_limit is not None and not self.store.is_sqlite:
            connection.execute(self._lock_key, params)
        if workspace_limit is not None and not self.store.is_sqlite:
            connection.execute(self._lock_workspace, params)
        # Expired leases are ignored by the counts; delete them once a minute.
        minute = minute_window(now)[0]
        if self._swept.get((principal.workspace_id, "leases")) != minute:
            connection.execute(self._sweep_leases, params)
            self._swept[(principal.workspace_id, "leases")] = minute
        for limit, count, label in (
            (key_limit, self._count_key_leases, "API key"),
            (workspace_limit, self._count_workspace_leases, "workspace"),
        ):
            if limit is not None and (connection.scalar(count, params) or 0) >= limit:
                raise Limited(f"Too many concurrent requests for this {label} (limit {limit})",
                    code="concurrency_limit_exceeded",
                    retry_after_s=_CONCURRENCY_RETRY_S,
                )
        lease_id = secrets.token_hex(16)
        connection.execute(
            self._insert_lease,
            {
                "id": lease_id,
                "api_key_id": principal.key_id,
                "workspace_id": principal.workspace_id,
                "expires_at": moment + timedelta(seconds=self.lease_ttl_s),
            },
        )
        return lease_id


# -- per-process admission -------------------------------------------------------------


@dataclass(frozen=True)
class AdmissionLimits:
    """What one server admits per workspace, set by its operator (`tramontane up`).

    A workspace runs at most `max_concurrent` inference requests at once (its own
    `max_concurrent_requests` limit, when set, replaces this default); up to
    `max_queued` more wait for a slot, each for at most `max_queue_wait_s`; past
    either, a 429 with Retry-After. `weights` gives workspaces other than 1 their
    share of the engines (engine/scheduler.py)."""

    max_concurrent: int = 64
    max_queued: int = 128
    max_queue_wait_s: float = 30.0
    weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_queued < 0 or self.max_queue_wait_s < 0:
            raise ValueError("admission limits: max_concurrent >= 1, max_queued >= 0, max_queue_wait_s >= 0")
        if any(not w > 0 for w in self.weights.values()):
            raise ValueError("a workspace's scheduling weight must be positive")

    def weight(self, workspace_id: str) -> float:
        return self.weights.get(workspace_id, 1.0)


# Nothing tells when a queued slot frees up; a second is a sensible pause before retrying.
_QUEUE_RETRY_S = 1.0


class _Line:
    __slots__ = ("running", "waiters")

    def __init__(self) -> None:
        self.running = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class WorkspaceGate:
    """Per-workspace concurrency slots with a bounded, time-limited queue, on one
    event loop. A slot freed goes straight to the longest waiting request."""

    def __init__(self, limits: AdmissionLimits):
        self.limits = limits
        self._lines: dict[str, _Line] = {}

    def running(self, workspace_id: str) -> int:
        line = self._lines.get(workspace_id)
        return line.running if line else 0

    def queued(self, workspace_id: str) -> int:
        line = self._lines.get(workspace_id)
        return len(line.waiters) if line else 0

    async def enter(self, workspace_id: str, max_concurrent: int | None = None) -> None:
        """Takes a slot of `workspace_id` (limit: `max_concurrent`, else the default),
        waiting in its queue if need be; raises Limited (429) when the queue is full
        or the wait too long. Pair with `leave`."""
        limit = max_concurrent if max_concurrent is not None else self.limits.max_concurrent
        line = self._lines.setdefault(workspace_id, _Line())
        if line.running < limit and not line.waiters:
            line.running += 1
            return
        if len(line.waiters) >= self.limits.max_queued:
            raise Limited(
                f"Too many requests in flight for this workspace ({line.running} running, "
                f"{len(line.waiters)} queued)",
                code="workspace_queue_full",
                retry_after_s=_QUEUE_RETRY_S,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.limits.max_queue_wait_s)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.leave(workspace_id)  # handed a slot just as it gave up: pass it on
            else:
                waiter.cancel()
                line.waiters.remove(waiter)
                self._forget_if_idle(workspace_id, line)
            if isinstance(exc, TimeoutError):
                raise Limited(
                    f"This workspace's {limit} concurrent requests did not free a slot within "
                    f"{self.limits.max_queue_wait_s:g} s",
                    code="workspace_queue_timeout",
                    retry_after_s=_QUEUE_RETRY_S,
                ) from None
            raise
        # The slot was handed over by `leave`, already counted in `running`.

    def leave(self, workspace_id: str) -> None:
        line = self._lines.get(workspace_id)
        if line is None:
            return
        while line.waiters:
            waiter = line.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; `running` stays
                return
        line.running -= 1
        self._forget_if_idle(workspace_id, line)

    def _forget_if_idle(self, workspace_id: str, line: _Line) -> None:
        if line.running <= 0 and not line.waiters:
            self._lines.pop(workspace_id, None)
