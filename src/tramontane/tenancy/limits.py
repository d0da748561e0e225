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

Concurrency is counted as lease rows, one per request in flight, with an
expiry so that a crashed process cannot hold slots for ever. Admission locks
the key's and the workspace's rows (FOR NO KEY UPDATE, which does not block the
foreign-key checks of concurrent inserts, so it cannot deadlock with them),
drops expired leases, counts the rest and adds its own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..store import ApiKey, RateCounter, RequestLease, Store, Workspace
from .errors import TenancyError
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
    def __init__(self, store: Store, *, lease_ttl_s: float = DEFAULT_LEASE_TTL_S, clock: Callable[[], float] = time.time):
        self.store = store
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self._insert: Any = sqlite_insert if store.is_sqlite else pg_insert
        # (subject, metric) -> the window whose predecessors this process already deleted.
        self._swept: dict[tuple[str, str], int] = {}

    def admit(self, principal: Principal) -> str | None:
        """Counts a new request against the key's and workspace's limits, or raises a
        429. Returns the concurrency lease to `release` when the request ends (None
        when no concurrency limit applies)."""
        subjects = _subjects(principal)
        if all(limits.unlimited for _, _, limits in subjects):
            return None
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
                connection.execute(delete(RequestLease).where(RequestLease.id == lease_id))

    def consume(self, connection: Connection, principal: Principal, tokens: int) -> None:
        """Adds a finished request's tokens to the per-minute and monthly totals of its
        key and workspace (always, so that a limit set mid-month sees earlier use)."""
        now = self.clock()
        for subject, _, _ in _subjects(principal):
            for metric, (window, _) in ((TOKENS_PER_MINUTE, minute_window(now)), (TOKENS_PER_MONTH, month_window(now))):
                statement = self._insert(RateCounter).values(
                    subject=subject, metric=metric, window_start=window, value=tokens, workspace_id=principal.workspace_id
                )
                statement = statement.on_conflict_do_update(
                    index_elements=[RateCounter.subject, RateCounter.metric, RateCounter.window_start],
                    set_={"value": RateCounter.value + statement.excluded.value},
                )
                connection.execute(statement)
                self._sweep(connection, subject, metric, window)

    def _check_rates(
        self, connection: Connection, workspace_id: str, subject: str, label: str, limits: Limits, now: float
    ) -> None:
        if limits.requests_per_minute is not None:
            window, end = minute_window(now)
            if not self._increment(connection, workspace_id, subject, window, limits.requests_per_minute):
                raise TenancyError(
                    429,
                    f"Rate limit reached for this {label}: {limits.requests_per_minute} requests per minute",
                    code="rate_limit_exceeded",
                    retry_after_s=end - now,
                )
            self._sweep(connection, subject, REQUESTS_PER_MINUTE, window)
        if limits.tokens_per_minute is not None:
            window, end = minute_window(now)
            if self._read(connection, subject, TOKENS_PER_MINUTE, window) >= limits.tokens_per_minute:
                raise TenancyError(
                    429,
                    f"Rate limit reached for this {label}: {limits.tokens_per_minute} tokens per minute",
                    code="rate_limit_exceeded",
                    retry_after_s=end - now,
                )
        if limits.monthly_token_budget is not None:
            window, end = month_window(now)
            if self._read(connection, subject, TOKENS_PER_MONTH, window) >= limits.monthly_token_budget:
                raise TenancyError(
                    429,
                    f"This {label}'s monthly budget of {limits.monthly_token_budget} tokens is spent",
                    code="insufficient_quota",
                    retry_after_s=end - now,
                )

    def _increment(self, connection: Connection, workspace_id: str, subject: str, window: int, limit: int) -> bool:
        if limit < 1:
            return False
        statement = self._insert(RateCounter).values(
            subject=subject, metric=REQUESTS_PER_MINUTE, window_start=window, value=1, workspace_id=workspace_id
        )
        statement = statement.on_conflict_do_update(
            index_elements=[RateCounter.subject, RateCounter.metric, RateCounter.window_start],
            set_={"value": RateCounter.value + 1},
            where=RateCounter.value + 1 <= limit,
        ).returning(RateCounter.value)
        return connection.execute(statement).first() is not None

    @staticmethod
    def _read(connection: Connection, subject: str, metric: str, window: int) -> int:
        value = connection.scalar(
            select(RateCounter.value).where(
                RateCounter.subject == subject, RateCounter.metric == metric, RateCounter.window_start == window
            )
        )
        return value or 0

    def _sweep(self, connection: Connection, subject: str, metric: str, window: int) -> None:
        """Deletes a subject's past windows, once per new window and process."""
        if self._swept.get((subject, metric)) == window:
            return
        connection.execute(
            delete(RateCounter).where(
                RateCounter.subject == subject, RateCounter.metric == metric, RateCounter.window_start < window
            )
        )
        self._swept[(subject, metric)] = window

    def _take_lease(self, connection: Connection, principal: Principal, now: float) -> str:
        connection.execute(select(ApiKey.id).where(ApiKey.id == principal.key_id).with_for_update(key_share=True))
        connection.execute(
            select(Workspace.id).where(Workspace.id == principal.workspace_id).with_for_update(key_share=True)
        )
        moment = datetime.fromtimestamp(now, UTC)
        connection.execute(
            delete(RequestLease).where(
                RequestLease.expires_at < moment,
                or_(RequestLease.api_key_id == principal.key_id, RequestLease.workspace_id == principal.workspace_id),
            )
        )
        checks = (
            (principal.key_limits.max_concurrent_requests, RequestLease.api_key_id == principal.key_id, "API key"),
            (
                principal.workspace_limits.max_concurrent_requests,
                RequestLease.workspace_id == principal.workspace_id,
                "workspace",
            ),
        )
        for limit, condition, label in checks:
            if limit is not None and connection.scalar(select(func.count()).select_from(RequestLease).where(condition)) >= limit:
                raise TenancyError(
                    429,
                    f"Too many concurrent requests for this {label} (limit {limit})",
                    code="concurrency_limit_exceeded",
                    retry_after_s=_CONCURRENCY_RETRY_S,
                )
        lease_id = secrets.token_hex(16)
        connection.execute(
            insert(RequestLease).values(
                id=lease_id,
                api_key_id=principal.key_id,
                workspace_id=principal.workspace_id,
                expires_at=moment + timedelta(seconds=self.lease_ttl_s),
            )
        )
        return lease_id
