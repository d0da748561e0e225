"""A gateway's seat in the control plane's election: it leads (runs the plane)
while it holds the control lease, and follows otherwise.

Every `poll_s` a follower tries to take the lease, and so learns who holds it;
the leader renews it every `ttl_s / 3`. Lease calls run in a worker thread,
bounded by `call_timeout_s`, so a database that stops answering cannot hang the
event loop. A leader that could not renew by its deadline, `ttl_s - margin_s`
after its last successful renewal's start, abdicates there and then: it stops acting and leaves its replicas
running for the next leader to adopt. It does so before the lease runs out in
the database, so two leaders never act at once (and the fencing token refuses
the writes of one that was paused past that point, see store/leases.py).

On a clean stop a leader that `hands_over` (gateways sharing a PostgreSQL
database) abdicates and releases the lease at once, so that another gateway
takes over within `poll_s` and adopts the replicas: a rolling restart of the
gateways restarts no replica. Otherwise (one server on SQLite) it stops its
replicas, as a single server always has."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..store.leases import Leader, Lease
from .plane import ControlPlane

log = logging.getLogger(__name__)

DOMAINS_REFRESH_S = 2.0


class ControlSeat:
    def __init__(
        self,
        plane: ControlPlane,
        lease: Lease,
        *,
        poll_s: float = 0.25,
        call_timeout_s: float = 1.0,
        margin_s: float = 0.5,
        hands_over: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.plane = plane
        self.lease = lease
        self.poll_s = poll_s
        self.call_timeout_s = call_timeout_s
        self.margin_s = margin_s
        self.hands_over = hands_over
        self._monotonic = monotonic
        self.leading = False
        self.leader: Leader | None = None  # the holder last seen, this gateway included
        self.changed = asyncio.Event()  # set at each change of leader seen
        self._renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._domains_loaded_at = -DOMAINS_REFRESH_S

    @property
    def token(self) -> int | None:
        return self.lease.token if self.leading else None

    async def start(self) -> None:
        """Takes part in the election; leads at once if the lease is free."""
        await self._step()
        self._task = asyncio.create_task(self._run(), name="control seat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        if self.leading and self.hands_over:
            log.info("handing the control plane over to the next gateway")
            await self.plane.abdicate()
        await self.plane.stop()
        if self.leading:
            with contextlib.suppress(Exception):
                await self._call(self.lease.release)
            self.leading = False

    async def _run(self) -> None:
        while True:
            if self.leading:  # wakes by the deadline at the latest, to step down in time
                interval = min(self.lease.ttl_s / 3, max(0.0, self._deadline() - self._monotonic()))
            else:
                interval = self.poll_s
            await asyncio.sleep(interval)
            await self._step()

    def _deadline(self) -> float:
        """When this leader must have stepped down unless it renews: `margin_s`
        before its lease can run out in the database."""
        return self._renewed_at + self.lease.ttl_s - self.margin_s

    async def _step(self) -> None:
        if self.leading:
            await self._renew()
        else:
            await self._contend()

    async def _renew(self) -> None:
        started = self._monotonic()
        if started >= self._deadline():
            await self._abdicate("could not renew it in time")
            return
        try:
            held = await self._call(self.lease.renew, min(self.call_timeout_s, self._deadline() - started))
        except Exception as exc:  # the database is unreachable, or too slow
            log.warning("cannot renew the control lease: %s", exc)
            return
        if held:
            self._renewed_at = started
        else:
            await self._abdicate("another gateway took it")

    async def _contend(self) -> None:
        started = self._monotonic()
        if started - self._domains_loaded_at >= DOMAINS_REFRESH_S:
            # A follower relays requests to custom domains: it keeps a fresh copy.
            with contextlib.suppress(Exception):
                await self._call(self.plane.domains.load)
                self._domains_loaded_at = started
        try:
            token = await self._call(self.lease.try_acquire)
            leader = await self._call(self.lease.leader) if token is None else None
        except Exception as exc:
            log.warning("cannot reach the control lease: %s", exc)
            return
        if token is None:
            self._see(leader)
            return
        self._renewed_at = started
        log.info("this gateway leads the control plane (fencing token %d)", token)
        try:
            await self.plane.start()
        except Exception:
            log.exception("the control plane failed to start; letting another gateway lead")
            await self.plane.abdicate()
            with contextlib.suppress(Exception):
                await self._call(self.lease.release)
            return
        self.leading = True
        self._see(Leader(self.lease.holder, token, self.lease.address))

    async def _abdicate(self, why: str) -> None:
        log.warning("this gateway no longer leads the control plane: %s", why)
        self.leading = False
        self.lease.token = None
        await self.plane.abdicate()
        self._see(None)

    def _see(self, leader: Leader | None) -> None:
        if leader != self.leader:
            self.leader = leader
            self.changed.set()
            self.changed = asyncio.Event()

    async def _call(self, function: Callable[[], object], timeout_s: float | None = None) -> object:
        async with asyncio.timeout(timeout_s or self.call_timeout_s):
            return await asyncio.to_thread(function)
