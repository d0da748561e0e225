"""The control plane's election among gateways sharing a real PostgreSQL
database: one leader at a time, takeover when it dies, adoption of its replicas,
and fencing of a leader that comes back after losing its lease.

Each gateway is a `ControlSeat` over its own `ControlPlane` and store; the planes
share one `MemoryBackend`, which stands for the cluster every gateway reaches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from tramontane.control.backends.memory import MemoryBackend
from tramontane.control.models import DeploymentRow
from tramontane.control.plane import ControlPlane
from tramontane.control.scheduler import NodeCapacity
from tramontane.control.seat import ControlSeat
from tramontane.control.spec import DeploymentSpec
from tramontane.control.states import ReplicaState
from tramontane.store import Store, open_store
from tramontane.store.leases import Fenced, Lease
from tramontane.tenancy import Capability, Tenancy

TTL_S = 2.0  # short, for quick takeovers; long enough for a busy test machine
SPEC = DeploymentSpec.model_validate(
    {"name": "web", "command": "serve", "resources": {"cpu": 0.5, "memory_mb": 64},
     "scaling": {"min_replicas": 2, "max_replicas": 4, "downscale_delay_s": 600}}
)


class Gateway:
    def __init__(self, url: str, home: Path, backend: MemoryBackend, name: str):
        self.store = open_store(url)
        self.lease = Lease(self.store, f"http://{name}", ttl_s=TTL_S)
        self.plane = ControlPlane(
            self.store, backend=backend, capacity=NodeCapacity(cpu=8, memory_mb=8192), home=home,
            reconcile_interval_s=0.05, fence=lambda session: self.lease.fence(session, self.lease.token),
            replica_secret=b"shared by the gateways",
        )
        self.seat = ControlSeat(self.plane, self.lease, poll_s=0.05, margin_s=0.3)
        self.workspace = ""

    def freeze(self) -> None:
        """Stops the gateway's seat dead, as a SIGKILL or a long pause would: its
        lease is neither renewed nor released, its replicas keep running."""
        assert self.seat._task is not None
        self.seat._task.cancel()


@pytest.fixture
def backend() -> MemoryBackend:
    backend = MemoryBackend()
    backend.close = _noop  # type: ignore[method-assign]  # shared: no plane may close it
    return backend


async def _noop() -> None:
    return None


@pytest.fixture
async def gateways(postgres_url: str, tmp_path: Path, backend: MemoryBackend) -> AsyncIterator[list[Gateway]]:
    made = [Gateway(postgres_url, tmp_path / name, backend, name) for name in ("a", "b", "c")]
    tenancy = Tenancy(made[0].store, home=tmp_path, pepper=b"test-pepper-0123456789abcdef")
    workspace_id, _ = tenancy.create_tenant("ws", frozenset({Capability.DEPLOY}))
    for gateway in made:
        gateway.workspace = workspace_id
    yield made
    for gateway in made:
        gateway.seat.hands_over = True  # leave the shared replicas to the test's end
        if gateway.seat._task is not None and not gateway.seat._task.done():
            await gateway.seat.stop()
        gateway.store.close()


async def until(condition, timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "timed out"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_one_gateway_leads_the_others_follow_and_know_it(gateways: list[Gateway]):
    for gateway in gateways:
        await gateway.seat.start()
    await until(lambda: all(g.seat.leader is not None for g in gateways))
    assert [g.seat.leading for g in gateways] == [True, False, False]
    assert {g.seat.leader.address for g in gateways} == {"http://a"}


async def test_a_dead_leaders_successor_adopts_its_replicas_and_goes_on(
    gateways: list[Gateway], backend: MemoryBackend
):
    a, b, c = gateways
    await a.seat.start()
    deployment = await a.plane.create(a.workspace, SPEC)
    await until(lambda: len([r for r in deployment.replicas.values() if r.ready]) == 2)
    await b.seat.start()
    await c.seat.start()

    a.freeze()
    took = await until(lambda: b.seat.leading or c.seat.leading)
    assert took < TTL_S + 1.0
    successor = b if b.seat.leading else c
    assert not (b.seat.leading and c.seat.leading)
    adopted = successor.plane.get(a.workspace, "web")
    await until(lambda: len([r for r in adopted.replicas.values() if r.ready]) == 2)
    # The same two processes, adopted: none launched again, none doubled.
    assert sorted(backend.adopted) == sorted(deployment.replicas) and len(backend.launched) == 2
    # It goes on scaling: the new leader's writes pass its own fence.
    await successor.plane.scale(a.workspace, "web", 3)
    await until(lambda: len([r for r in adopted.replicas.values() if r.ready]) == 3)
    assert len(backend.launched) == 3


async def test_a_leader_that_comes_back_after_losing_its_lease_cannot_act(
    gateways: list[Gateway], backend: MemoryBackend
):
    """A paused or partitioned leader still holds its deployments in memory; when it
    resumes after another took over, each write it tries is refused by the token,
    and so is the side effect that would follow it (a launch)."""
    a, b, _ = gateways
    await a.seat.start()
    await a.plane.create(a.workspace, SPEC)
    await b.seat.start()
    a.freeze()
    await until(lambda: b.seat.leading)
    assert b.lease.token == a.lease.token + 1

    with pytest.raises(Fenced):
        await a.plane.scale(a.workspace, "web", 4)
    with pytest.raises(Fenced):
        await a.plane.reconcile()
    with b.store.session() as session:
        assert session.query(DeploymentRow).one().desired_replicas == 2
    assert len(backend.launched) == 2
    # Its seat, resumed, learns it no longer leads and lets go without a stop.
    await a.seat._step()
    assert not a.seat.leading and a.plane.list(a.workspace) == []
    assert all(not r.stopped for r in backend.replicas.values())


async def test_a_leader_cut_off_from_the_database_steps_down_before_its_lease_runs_out(
    gateways: list[Gateway], backend: MemoryBackend
):
    a, b, _ = gateways
    await a.seat.start()
    await a.plane.create(a.workspace, SPEC)

    def unreachable() -> bool:
        raise OperationalError("renew", {}, Exception("connection timed out"))

    a.lease.renew = unreachable  # type: ignore[method-assign]
    stepped_down = await until(lambda: not a.seat.leading)
    assert stepped_down < TTL_S  # before the database lets another take the lease
    await b.seat.start()
    await until(lambda: b.seat.leading)
    replicas = b.plane.get(a.workspace, "web").replicas.values()
    await until(lambda: len([r for r in replicas if r.state is ReplicaState.RUNNING]) == 2)
    assert len(backend.launched) == 2


async def test_a_clean_stop_hands_over_at_once(gateways: list[Gateway], backend: MemoryBackend):
    a, b, _ = gateways
    a.seat.hands_over = True
    await a.seat.start()
    await a.plane.create(a.workspace, SPEC)
    await b.seat.start()
    await a.seat.stop()
    took = await until(lambda: b.seat.leading)
    assert took < 0.5  # no wait for the lease to run out
    assert len(backend.launched) == 2 and not any(r.stopped for r in backend.replicas.values())


def test_the_lease_is_judged_by_the_databases_clock(postgres_url: str):
    store: Store = open_store(postgres_url)
    try:
        first, second = Lease(store, "http://a", ttl_s=5), Lease(store, "http://b", ttl_s=5)
        assert first.try_acquire() == 1
        assert second.try_acquire() is None and second.leader().address == "http://a"
        assert first.renew()
        first.release()
        assert second.try_acquire() == 2 and not first.renew()
    finally:
        store.close()
