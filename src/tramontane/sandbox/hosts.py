"""Sandbox hosts and where each sandbox lives, as rows of the shared database.

A host is a machine's `SandboxManager` behind the internal node API (`node`): a
`tramontane node` agent, or a gateway that hosts sandboxes itself. It registers
its address and capacity (`sandbox_hosts`) and renews `heartbeat_at` every
second or so; a gateway places each new sandbox on a live host with room and
records the placement (`sandbox_placements`), which every gateway then reads to
route the sandbox's calls to its host.

Liveness is judged by the database's clock, never a gateway's: a host whose
heartbeat is older than `ttl_s` is down, and its running sandboxes are `lost`
(their processes and files were on it). A host that comes back after that kills
the sandboxes it still holds that were declared lost, so no sandbox ever runs
twice under one id or answers after the API said it was gone.

Every method is one short transaction, synchronous: call them off the event loop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import JSON, Float, Integer, String, and_, delete, func, select, update
from sqlalchemy.sql import Subquery
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from ..store.database import Store
from ..store.leases import db_now
from ..store.models import Base, WorkspaceOwned

DEFAULT_TTL_S = 5.0
DEFAULT_HEARTBEAT_S = 1.0
# A placement younger than this is not judged against its host's list of
# sandboxes: the host may have created it after it sent that list.
_SETTLING_S = 10.0


class PlacementState(enum.StrEnum):
    RUNNING = "running"  # running or paused on its host
    LOST = "lost"  # its host stopped heartbeating; its state is gone
    ENDED = "ended"  # killed, or reclaimed by its host (timeout, exit)


class SandboxHostRow(Base):
    __tablename__ = "sandbox_hosts"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The process now serving under this name: a random id per start, so that
    # a restarted host is told apart from the one before it.
    incarnation: Mapped[str] = mapped_column(String(64))
    # Its internal node API, e.g. http://10.0.0.7:8100.
    address: Mapped[str] = mapped_column(String(500))
    cpu: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    max_sandboxes: Mapped[int] = mapped_column(Integer)
    # The built-in templates (tiers) it can start: "base", "microvm".
    tiers: Mapped[list[str]] = mapped_column(JSON)
    # What the host's own sandboxes commit, pooled ones included (for operators).
    committed_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    # The database's clock, in seconds since the epoch.
    heartbeat_at: Mapped[float] = mapped_column(Float)
    registered_at: Mapped[float] = mapped_column(Float)


class SandboxPlacementRow(WorkspaceOwned, Base):
    __tablename__ = "sandbox_placements"

    sandbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16), default=PlacementState.RUNNING.value)
    template: Mapped[str] = mapped_column(String(128))
    # Its memory limit (a microVM's: the VM's), counted against its host's memory.
    memory_mb: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str | None] = mapped_column(String(200), default=None)


@dataclass(frozen=True)
class HostInfo:
    """What a host says of itself when it registers and at each heartbeat."""

    name: str
    address: str
    cpu: float
    memory_mb: int
    max_sandboxes: int
    tiers: tuple[str, ...]


@dataclass(frozen=True)
class HostView:
    """A live host as placement sees it: its capacity and what is placed on it."""

    name: str
    address: str
    max_sandboxes: int
    memory_mb: int
    tiers: tuple[str, ...]
    placed: int
    placed_memory_mb: int

    @property
    def has_room(self) -> bool:
        return self.placed < self.max_sandboxes

    @property
    def load(self) -> float:
        """The fuller of its sandbox slots and its memory, from 0 to 1, by the
        placements recorded (not by the host's last heartbeat, which lags)."""
        slots = self.placed / max(1, self.max_sandboxes)
        return max(slots, self.placed_memory_mb / max(1, self.memory_mb))


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    live: bool
    tiers: tuple[str, ...]
    cpu: float
    memory_mb: int
    max_sandboxes: int
    placed: int  # running sandboxes placed on it
    placed_memory_mb: int
    committed_memory_mb: int  # by its last heartbeat, warm pool included
    heartbeat_age_s: float


@dataclass(frozen=True)
class Beat:
    """What a heartbeat tells a host of the sandboxes it holds."""

    placed: set[str]  # placed here and running, by the database
    lost: set[str]  # declared lost (or ended) meanwhile: to kill


@dataclass(frozen=True)
class Placement:
    sandbox_id: str
    workspace_id: str
    host: str
    state: PlacementState
    template: str
    created_at: float
    ended_at: float | None
    reason: str | None
    # Its host's address, and whether that host is live now (None: no such host row).
    address: str | None
    host_live: bool

    @property
    def lost(self) -> bool:
        return self.state is PlacementState.LOST or (self.state is PlacementState.RUNNING and not self.host_live)


def _placed_per_host() -> Subquery:
    """How many running sandboxes each host holds, and the memory they were given."""
    return (
        select(
            SandboxPlacementRow.host,
            func.count().label("placed"),
            func.sum(SandboxPlacementRow.memory_mb).label("memory_mb"),
        )
        .where(SandboxPlacementRow.state == PlacementState.RUNNING.value)
        .group_by(SandboxPlacementRow.host)
        .subquery()
    )


def rank(hosts: list[HostView], tier: str) -> list[HostView]:
    """Those of `hosts` that run `tier` and have room, least loaded first."""
    fitting = [h for h in hosts if tier in h.tiers and h.has_room]
    return sorted(fitting, key=lambda h: (h.load, h.placed, h.name))


class HostDirectory:
    def __init__(self, store: Store, *, ttl_s: float = DEFAULT_TTL_S):
        self.store = store
        self.ttl_s = ttl_s

    # -- a host's side

    def register(self, host: HostInfo, incarnation: str, sandbox_ids: set[str]) -> None:
        """Takes the name `host.name` for this process, and declares lost the
        sandboxes an earlier process under that name left placed but does not hold."""
        now = db_now(self.store)
        values = {
            "name": host.name, "incarnation": incarnation, "address": host.address, "cpu": host.cpu,
            "memory_mb": host.memory_mb, "max_sandboxes": host.max_sandboxes, "tiers": list(host.tiers),
            "committed_memory_mb": 0, "heartbeat_at": now, "registered_at": now,
        }  # fmt: skip
        insert = sqlite_insert(SandboxHostRow) if self.store.is_sqlite else pg_insert(SandboxHostRow)
        upsert = insert.values(**values).on_conflict_do_update(
            index_elements=[SandboxHostRow.name], set_={k: v for k, v in values.items() if k != "name"}
        )
        with self.store.write() as connection:
            connection.execute(upsert)
            connection.execute(
                self._end(
                    and_(SandboxPlacementRow.host == host.name, SandboxPlacementRow.sandbox_id.not_in(sandbox_ids)),
                    PlacementState.LOST, "its host restarted",
                )
            )

    def heartbeat(self, name: str, incarnation: str, sandbox_ids: set[str], committed_memory_mb: int) -> Beat:
        """Renews the host's heartbeat; ends the placements of sandboxes it no
        longer holds (reclaimed: timed out, exited). Returns which of
        `sandbox_ids` are placed and running here, and which were declared lost
        (for the host to kill). Raises `HostReplaced` when another process took
        the name."""
        now = db_now(self.store)
        with self.store.write() as connection:
            renewed = connection.execute(
                update(SandboxHostRow)
                .where(SandboxHostRow.name == name, SandboxHostRow.incarnation == incarnation)
                .values(heartbeat_at=now, committed_memory_mb=committed_memory_mb)
                .returning(SandboxHostRow.name)
            ).scalar()
            if renewed is None:
                raise HostReplaced(f"sandbox host {name!r} was registered again by another process")
            connection.execute(
                self._end(
                    and_(
                        SandboxPlacementRow.host == name,
                        SandboxPlacementRow.sandbox_id.not_in(sandbox_ids),
                        SandboxPlacementRow.created_at < now - _SETTLING_S,
                    ),
                    PlacementState.ENDED, "reclaimed by its host",
                )
            )
            rows = connection.execute(
                select(SandboxPlacementRow.sandbox_id, SandboxPlacementRow.state).where(
                    SandboxPlacementRow.host == name, SandboxPlacementRow.sandbox_id.in_(sandbox_ids)
                )
            ).all()
        running = PlacementState.RUNNING.value
        return Beat(
            placed={sandbox_id for sandbox_id, state in rows if state == running},
            lost={sandbox_id for sandbox_id, state in rows if state != running},
        )

    def leave(self, name: str, incarnation: str) -> None:
        """A clean stop: the host is down at once (its running sandboxes stop with it)."""
        with self.store.write() as connection:
            connection.execute(
                update(SandboxHostRow)
                .where(SandboxHostRow.name == name, SandboxHostRow.incarnation == incarnation)
                .values(heartbeat_at=0.0)
            )
            connection.execute(
                self._end(SandboxPlacementRow.host == name, PlacementState.LOST, "its host stopped")
            )

    # -- a gateway's side

    def live_hosts(self) -> list[HostView]:
        now = db_now(self.store)
        placed = _placed_per_host()
        query = (
            select(SandboxHostRow, func.coalesce(placed.c.placed, 0), func.coalesce(placed.c.memory_mb, 0))
            .outerjoin(placed, placed.c.host == SandboxHostRow.name)
            .where(SandboxHostRow.heartbeat_at >= now - self.ttl_s)
        )
        with self.store.session() as session:
            return [
                HostView(
                    host.name, host.address, host.max_sandboxes, host.memory_mb, tuple(host.tiers), int(count),
                    int(memory_mb),
                )  # fmt: skip
                for host, count, memory_mb in session.execute(query)
            ]

    def statuses(self) -> list[HostStatus]:
        """Every registered host, live or not, with what is placed on it: for operators."""
        now = db_now(self.store)
        placed = _placed_per_host()
        query = (
            select(SandboxHostRow, func.coalesce(placed.c.placed, 0), func.coalesce(placed.c.memory_mb, 0),
                   now - SandboxHostRow.heartbeat_at)
            .outerjoin(placed, placed.c.host == SandboxHostRow.name)
            .order_by(SandboxHostRow.name)
        )  # fmt: skip
        with self.store.session() as session:
            return [
                HostStatus(
                    host.name, host.address, float(age) <= self.ttl_s, tuple(host.tiers), host.cpu, host.memory_mb,
                    host.max_sandboxes, int(count), int(memory_mb), host.committed_memory_mb, float(age),
                )  # fmt: skip
                for host, count, memory_mb, age in session.execute(query)
            ]

    def candidates(self, tier: str) -> list[HostView]:
        """Live hosts that run `tier` and have room, least loaded first."""
        return rank(self.live_hosts(), tier)

    def record(self, sandbox_id: str, workspace_id: str, host: str, template: str, memory_mb: int) -> None:
        with self.store.write() as connection:
            connection.execute(
                SandboxPlacementRow.__table__.insert().values(
                    sandbox_id=sandbox_id, workspace_id=workspace_id, host=host, template=template, memory_mb=memory_mb,
                    state=PlacementState.RUNNING.value, created_at=db_now(self.store),
                )  # fmt: skip
            )

    def lookup(self, sandbox_id: str) -> Placement | None:
        """The sandbox's placement, ended ones included; None when no gateway placed it."""
        now = db_now(self.store)
        live = SandboxHostRow.heartbeat_at >= now - self.ttl_s
        query = (
            select(SandboxPlacementRow, SandboxHostRow.address, live)
            .outerjoin(SandboxHostRow, SandboxHostRow.name == SandboxPlacementRow.host)
            .where(SandboxPlacementRow.sandbox_id == sandbox_id)
        )
        with self.store.session() as session:
            found = session.execute(query).first()
        if found is None:
            return None
        row, address, host_live = found
        return Placement(
            row.sandbox_id, row.workspace_id, row.host, PlacementState(row.state), row.template, row.created_at,
            row.ended_at, row.reason, address, bool(host_live),
        )  # fmt: skip

    def lost_of(self, workspace_id: str) -> list[Placement]:
        """The workspace's lost sandboxes, for listings: they stay listed until
        deleted. Those of a host that just lapsed count before a sweep marks them."""
        now = db_now(self.store)
        live = select(SandboxHostRow.name).where(SandboxHostRow.heartbeat_at >= now - self.ttl_s)
        lapsed = and_(
            SandboxPlacementRow.state == PlacementState.RUNNING.value, SandboxPlacementRow.host.not_in(live)
        )
        query = select(SandboxPlacementRow).where(
            SandboxPlacementRow.workspace_id == workspace_id,
            (SandboxPlacementRow.state == PlacementState.LOST.value) | lapsed,
        )
        with self.store.session() as session:
            rows = session.scalars(query).all()
        return [
            Placement(r.sandbox_id, r.workspace_id, r.host, PlacementState.LOST, r.template, r.created_at,
                      r.ended_at, r.reason, None, False)
            for r in rows
        ]  # fmt: skip

    def end(self, sandbox_id: str, reason: str) -> None:
        """A sandbox killed through the API; a lost one, deleted, is forgotten."""
        with self.store.write() as connection:
            connection.execute(
                delete(SandboxPlacementRow).where(
                    SandboxPlacementRow.sandbox_id == sandbox_id,
                    SandboxPlacementRow.state == PlacementState.LOST.value,
                )
            )
            connection.execute(self._end(SandboxPlacementRow.sandbox_id == sandbox_id, PlacementState.ENDED, reason))

    def sweep(self) -> int:
        """Declares lost the running sandboxes of every host whose heartbeat lapsed
        (or whose row is gone); returns how many. Idempotent: any gateway may run it."""
        now = db_now(self.store)
        live = select(SandboxHostRow.name).where(SandboxHostRow.heartbeat_at >= now - self.ttl_s)
        with self.store.write() as connection:
            result = connection.execute(
                self._end(SandboxPlacementRow.host.not_in(live), PlacementState.LOST, "its host stopped heartbeating")
            )
        return result.rowcount or 0

    def _end(self, where, state: PlacementState, reason: str):  # type: ignore[no-untyped-def]
        return (
            update(SandboxPlacementRow)
            .where(where, SandboxPlacementRow.state == PlacementState.RUNNING.value)
            .values(state=state.value, ended_at=db_now(self.store), reason=reason)
        )


class HostReplaced(Exception):
    """Another process registered under this host's name."""

