"""Usage metering: one record per request, and reports over them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select

from ..store import Store, UsageRecord, Workspace
from .background_writer import BackgroundWriter
from .limits import Limiter
from .principal import Principal

# Report dimensions, by the name callers use.
GROUPS: dict[str, Any] = {
    "workspace": UsageRecord.workspace_id,
    "key": UsageRecord.api_key_id,
    "model": UsageRecord.model,
    "day": UsageRecord.day,
}

_INSERT = insert(UsageRecord)


@dataclass(frozen=True)
class Usage:
    """What one request used."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    energy_wh: float
    energy_source: str
    request_id: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def record(store: Store, limiter: Limiter, principal: Principal, usage: Usage) -> None:
    """Stores the record and adds its tokens to the key's and workspace's token
    limits, in one transaction: the report and the limits never disagree."""
    with store.write() as connection:
        _add(connection, limiter, [(principal, usage, datetime.fromtimestamp(limiter.clock(), UTC))])


class UsageWriter(BackgroundWriter[tuple[Principal, Usage, datetime]]):
    """Records usage (as `record` does) from a background thread: the hot path of
    inference, where a transaction per request would cost a hop to a worker thread
    and a commit each. The limits see the tokens once written, within milliseconds."""

    def __init__(self, store: Store, limiter: Limiter, *, capacity: int = 8192, batch_size: int = 256):
        super().__init__(store, "usage records", capacity=capacity, batch_size=batch_size)
        self.limiter = limiter

    def submit_usage(self, principal: Principal, usage: Usage) -> bool:
        return self.submit((principal, usage, datetime.fromtimestamp(self.limiter.clock(), UTC)))

    def insert(self, connection: Connection, items: Sequence[tuple[Principal, Usage, datetime]]) -> None:
        _add(connection, self.limiter, items)


def _add(connection: Connection, limiter: Limiter, items: Sequence[tuple[Principal, Usage, datetime]]) -> None:
    """One statement for the records, one for the token counters they add to."""
    connection.execute(
        _INSERT,
        [
            {
                "workspace_id": principal.workspace_id,
                "api_key_id": principal.key_id,
                "created_at": at,
                "day": at.date(),
                "model": usage.model,
                "request_id": usage.request_id,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "latency_ms": usage.latency_ms,
                "energy_wh": usage.energy_wh,
                "energy_source": usage.energy_source,
            }
            for principal, usage, at in items
        ],
    )
    limiter.consume(connection, [(principal, usage.total_tokens) for principal, usage, _ in items])


def report(
    store: Store,
    *,
    group_by: Sequence[str],
    organisation_id: str | None = None,
    workspace_id: str | None = None,
    key_id: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> list[dict[str, Any]]:
    """Totals per combination of `group_by` dimensions (GROUPS), over the records of
    an organisation, workspace or key, between two UTC days inclusive."""
    unknown = set(group_by) - GROUPS.keys()
    if unknown:
        raise ValueError(f"cannot group usage by {', '.join(sorted(unknown))} (valid: {', '.join(GROUPS)})")
    dimensions = [GROUPS[name].label(name) for name in group_by]
    total_tokens = UsageRecord.prompt_tokens + UsageRecord.completion_tokens
    statement = (
        select(
            *dimensions,
            func.count().label("requests"),
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(total_tokens), 0).label("total_tokens"),
            func.coalesce(func.sum(UsageRecord.energy_wh), 0.0).label("energy_wh"),
            func.coalesce(func.avg(UsageRecord.latency_ms), 0.0).label("mean_latency_ms"),
        )
        .group_by(*dimensions)
        .order_by(*dimensions)
    )
    if organisation_id is not None:
        statement = statement.join(Workspace, Workspace.id == UsageRecord.workspace_id).where(
            Workspace.organisation_id == organisation_id
        )
    if workspace_id is not None:
        statement = statement.where(UsageRecord.workspace_id == workspace_id)
    if key_id is not None:
        statement = statement.where(UsageRecord.api_key_id == key_id)
    if since is not None:
        statement = statement.where(UsageRecord.day >= since)
    if until is not None:
        statement = statement.where(UsageRecord.day <= until)
    with store.read() as connection:
        return [
            {**row._asdict(), "energy_wh": float(row.energy_wh), "mean_latency_ms": float(row.mean_latency_ms)}
            for row in connection.execute(statement)
        ]
