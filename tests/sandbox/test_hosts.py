"""The sandbox hosts' directory on both databases: registration, placement
order, liveness judged by the database's clock, lost and reclaimed sandboxes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tramontane.sandbox.hosts import HostDirectory, HostInfo, HostReplaced, PlacementState
from tramontane.sandbox import node
from tramontane.sandbox.node import HostAgent, HostSettings
from tramontane.store import Store, open_store
from tramontane.tenancy import Capability, Tenancy

TTL_S = 0.5


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 't.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(url)
    yield store
    store.close()


@pytest.fixture
def workspace(store: Store, tmp_path: Path) -> str:
    tenancy = Tenancy(store, home=tmp_path / "home", pepper=b"test-pepper-0123456789abcdef")
    try:
        return tenancy.create_tenant("t", frozenset({Capability.SANDBOX}))[0]
    finally:
        tenancy.usage_writer.close()
        tenancy.request_logs.close()


def host(name: str, slots: int = 4, tiers: tuple[str, ...] = ("base",)) -> HostInfo:
    return HostInfo(name, f"http://{name}:8100", 8.0, 16384, slots, tiers)


def test_placement_prefers_the_least_loaded_live_host_of_the_tier(store: Store, workspace: str) -> None:
    hosts = HostDirectory(store, ttl_s=TTL_S)
    hosts.register(host("a"), "a1", set())
    hosts.register(host("b", tiers=("base", "microvm")), "b1", set())
    assert {h.name for h in hosts.candidates("base")} == {"a", "b"}
    assert [h.name for h in hosts.candidates("microvm")] == ["b"]
    hosts.record("s1", workspace, "a", "base", 512)
    assert [h.name for h in hosts.candidates("base")] == ["b", "a"]
    for n in range(4):
        hosts.record(f"b{n}", workspace, "b", "base", 512)
    assert [h.name for h in hosts.candidates("base")] == ["a"]  # b is full
    # Memory counts too: a host whose sandboxes take most of its memory is fuller.
    hosts.register(host("c", slots=100), "c1", set())
    hosts.record("big", workspace, "c", "base", 15000)
    assert [(h.name, round(h.load, 2)) for h in hosts.candidates("base")] == [("a", 0.25), ("c", 0.92)]


def test_a_host_whose_heartbeat_lapses_has_its_sandboxes_lost(store: Store, workspace: str) -> None:
    hosts = HostDirectory(store, ttl_s=TTL_S)
    hosts.register(host("a"), "a1", set())
    hosts.register(host("b"), "b1", set())
    hosts.record("on-a", workspace, "a", "base", 512)
    hosts.record("on-b", workspace, "b", "base", 512)
    deadline = time.monotonic() + 5
    while hosts.lookup("on-a").host_live:  # type: ignore[union-attr]
        hosts.heartbeat("b", "b1", {"on-b"}, 0)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert hosts.lookup("on-a").lost  # type: ignore[union-attr]  # before any sweep: judged on read
    assert [p.sandbox_id for p in hosts.lost_of(workspace)] == ["on-a"]
    assert hosts.sweep() == 1 and hosts.sweep() == 0  # idempotent
    lost = hosts.lookup("on-a")
    assert lost is not None and lost.state is PlacementState.LOST and lost.reason == "its host stopped heartbeating"
    assert not hosts.lookup("on-b").lost  # type: ignore[union-attr]
    assert [h.name for h in hosts.candidates("base")] == ["b"]
    # Back after all (a long pause): it is told to kill what was declared lost; nothing runs twice.
    assert hosts.heartbeat("a", "a1", {"on-a"}, 0).lost == {"on-a"}
    assert hosts.lookup("on-a").state is PlacementState.LOST  # type: ignore[union-attr]
    # Deleted through the API, a lost sandbox is forgotten.
    hosts.end("on-a", "deleted")
    assert hosts.lookup("on-a") is None and hosts.lost_of(workspace) == []


def test_a_restarted_host_loses_what_it_no_longer_holds(store: Store, workspace: str) -> None:
    hosts = HostDirectory(store, ttl_s=TTL_S)
    hosts.register(host("a"), "a1", set())
    hosts.record("kept", workspace, "a", "base", 512)  # paused on disk: it comes back
    hosts.record("gone", workspace, "a", "base", 512)
    hosts.register(host("a"), "a2", {"kept"})
    assert hosts.lookup("gone").state is PlacementState.LOST  # type: ignore[union-attr]
    assert hosts.lookup("kept").state is PlacementState.RUNNING  # type: ignore[union-attr]
    with pytest.raises(HostReplaced):
        hosts.heartbeat("a", "a1", {"kept"}, 0)  # the old process, if it still ran, stops heartbeating
    hosts.leave("a", "a2")
    assert hosts.lookup("kept").lost and hosts.candidates("base") == []  # type: ignore[union-attr]


def test_sandboxes_a_host_reclaimed_end_after_settling(store: Store, workspace: str) -> None:
    hosts = HostDirectory(store, ttl_s=TTL_S)
    hosts.register(host("a"), "a1", set())
    hosts.record("new", workspace, "a", "base", 512)
    # Just placed, not yet in the host's list: left alone.
    hosts.heartbeat("a", "a1", set(), 0)
    assert hosts.lookup("new").state is PlacementState.RUNNING  # type: ignore[union-attr]
    with store.write() as connection:  # placed long ago
        connection.exec_driver_sql("UPDATE sandbox_placements SET created_at = created_at - 60")
    hosts.heartbeat("a", "a1", set(), 0)
    ended = hosts.lookup("new")
    assert ended is not None and ended.state is PlacementState.ENDED and ended.reason == "reclaimed by its host"
    assert hosts.candidates("base")[0].placed == 0


class FakeManager:
    """The manager's side an agent uses: which sandboxes it holds, and kill."""

    def __init__(self, held: set[str]):
        self.held = set(held)

    def list(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(id=i) for i in sorted(self.held)]

    def committed_mb(self) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        return {"memory_capacity_mb": 16384, "capacity": 4}

    def tiers(self) -> tuple[str, ...]:
        return ("base",)

    async def kill(self, sandbox_id: str, owner: str | None = None) -> None:
        self.held.discard(sandbox_id)


async def test_an_agent_kills_what_is_no_longer_placed_on_its_host(
    store: Store, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its workspace erased, or made through the node API and never recorded (its
    gateway died): killed at a heartbeat. One not made through the node API (a
    conversation's) is not the agent's to judge."""
    monkeypatch.setattr(node, "RECORD_WITHIN_S", 0.3)
    hosts = HostDirectory(store, ttl_s=TTL_S)
    manager = FakeManager({"placed", "erased", "orphan", "conversation"})
    agent = HostAgent(manager, hosts, HostSettings("a", "http://a:8100", heartbeat_s=0.05))  # type: ignore[arg-type]
    await agent.start()
    try:
        for made in ("placed", "erased", "orphan"):
            agent.created(made)
        hosts.record("placed", workspace, "a", "base", 512)
        hosts.record("erased", workspace, "a", "base", 512)
        with store.write() as connection:  # at once, as a cascade from the workspace's erasure would
            connection.exec_driver_sql("DELETE FROM sandbox_placements WHERE sandbox_id = 'erased'")
        deadline = time.monotonic() + 5
        while manager.held != {"placed", "conversation"}:
            assert time.monotonic() < deadline, f"the agent left {manager.held}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert manager.held == {"placed", "conversation"}
    finally:
        await agent.stop()
    assert hosts.lookup("placed").lost  # type: ignore[union-attr]  # it left: its sandboxes went with it


async def test_a_dedicated_host_judges_what_it_finds_at_start(
    store: Store, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node restarting finds paused sandboxes on its disk: one whose workspace was
    erased while it was down (its placement gone) is killed, snapshot and all; one
    still placed here stays. A gateway that also hosts leaves both alone."""
    monkeypatch.setattr(node, "RECORD_WITHIN_S", 0.3)
    hosts = HostDirectory(store, ttl_s=TTL_S)
    for dedicated in (False, True):
        kept, erased = f"kept-{dedicated}", f"erased-{dedicated}"
        hosts.register(host("a"), f"before-{dedicated}", {kept})
        hosts.record(kept, workspace, "a", "base", 512)
        manager = FakeManager({kept, erased})
        settings = HostSettings("a", "http://a:8100", heartbeat_s=0.05, dedicated=dedicated)
        agent = HostAgent(manager, hosts, settings)  # type: ignore[arg-type]
        await agent.start()
        try:
            survivors = {kept} if dedicated else {kept, erased}
            deadline = time.monotonic() + 5
            while manager.held != survivors:
                assert time.monotonic() < deadline, f"the agent left {manager.held}"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.6)  # past the settling time: nothing more goes
            assert manager.held == survivors
            assert not hosts.lookup(kept).lost  # type: ignore[union-attr]
        finally:
            await agent.stop()
