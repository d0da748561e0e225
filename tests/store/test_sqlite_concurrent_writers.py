"""Service calls that read and then write, racing a live server's other writers on
one SQLite file. A deferred transaction whose read snapshot went stale before its
first write fails at once with "database is locked" (no busy timeout can help it);
these calls must take the write lock up front and wait their turn instead."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tramontane.agents.registry import AgentRegistry
from tramontane.agents.schemas import AgentCreate, AgentUpdate
from tramontane.finetune.files import FileStore
from tramontane.tenancy import Capability, EnergyReading, Principal, Tenancy

ITERATIONS = 200
DEADLINE_S = 20.0


@pytest.fixture
def tenancy(tmp_path: Path) -> Iterator[Tenancy]:
    tenancy = Tenancy.open(f"sqlite:///{tmp_path / 'tramontane.db'}", home=tmp_path)
    yield tenancy
    tenancy.close()


@pytest.fixture
def principal(tenancy: Tenancy) -> Principal:
    _, key = tenancy.create_tenant("racer", frozenset({Capability.INFERENCE}))
    return tenancy.authenticate(f"Bearer {key}")


def race(tenancy: Tenancy, principal: Principal, change: Callable[[int], object]) -> int:
    """Runs `change(i)` ITERATIONS times (at most DEADLINE_S) while another thread
    meters usage every millisecond, as a busy server's requests do; returns how many ran."""
    stop = threading.Event()
    metered = 0
    writer_errors: list[BaseException] = []

    def meter() -> None:
        nonlocal metered
        while not stop.wait(0.001):
            try:
                tenancy.record_usage(
                    principal,
                    model="m",
                    prompt_tokens=1,
                    completion_tokens=1,
                    latency_s=0.001,
                    energy=EnergyReading(0.0, "none"),
                )
            except BaseException as exc:
                writer_errors.append(exc)
                return
            metered += 1

    writer = threading.Thread(target=meter)
    writer.start()
    deadline = time.monotonic() + DEADLINE_S
    done = 0
    try:
        while done < ITERATIONS and time.monotonic() < deadline:
            change(done)  # an OperationalError ("database is locked") fails the test here
            done += 1
    finally:
        stop.set()
        writer.join()
    assert writer_errors == []
    assert metered > 0, "the other writer never committed: nothing raced"
    return done


def test_agent_updates_race_metering(tenancy: Tenancy, principal: Principal) -> None:
    agents = AgentRegistry(tenancy.store)
    agent = agents.create(principal, AgentCreate(model="m", name="racer"))
    done = race(tenancy, principal, lambda i: agents.update(principal, agent.id, AgentUpdate(instructions=f"v{i}")))
    assert agents.get(principal, agent.id).versions == list(range(done + 1))


def test_file_deletes_race_metering(tenancy: Tenancy, principal: Principal, tmp_path: Path) -> None:
    files = FileStore(tenancy.store, tmp_path, max_bytes=1 << 20)

    def upload_and_delete(i: int) -> None:
        row = files.create(principal.workspace_id, f"{i}.jsonl", "fine-tune", io.BytesIO(b"{}\n"))
        files.delete(principal.workspace_id, row.id)

    race(tenancy, principal, upload_and_delete)
    assert files.list(principal.workspace_id, purpose=None, page=0, page_size=10) == ([], 0)
