"""Evaluation jobs shared by gateways on one real PostgreSQL database: a job runs
on one gateway at a time (its lease), is taken over when that gateway stops
renewing it, a runner that lost its lease records nothing more, and a
cancellation through one gateway stops the job on another.

The gateways are two `Evaluations` over their own stores of the same database
and one home (a shared volume). Their items are answered in-process, behind a
gate: the point here is who runs a job, not what a model answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tramontane.evaluations import service as evaluations
from tramontane.evaluations.models import EvaluationJobRow
from tramontane.evaluations.schemas import CreateEvaluation
from tramontane.evaluations.service import Evaluations
from tramontane.finetune.files import FileStore
from tramontane.inference import ModelRegistry
from tramontane.inference.metrics import Metrics
from tramontane.store import open_store
from tramontane.store.leases import LeaseRow
from tramontane.store.types import new_id
from tramontane.tenancy import Capability, Tenancy

ITEMS = 6
PEPPER = b"test-pepper-0123456789abcdef"


class Gateway(Evaluations):
    def __init__(self, name: str, url: str, home: Path):
        store = open_store(url)
        registry = ModelRegistry()
        super().__init__(Tenancy(store, home=home, pepper=PEPPER), FileStore(store, home, max_bytes=1 << 20),
                         registry, Metrics(registry), None)
        self.name = name
        self.ran: list[int] = []  # the items this gateway answered
        self.gate = asyncio.Event()  # items wait on it: a gateway that stalls mid-job
        self.gate.set()

    def _work(self, job: EvaluationJobRow, request: CreateEvaluation) -> Any:
        def work(caller: Any) -> Any:
            for item in range(ITEMS):
                yield 0, item, self._answer(item)

        return work

    def _answer(self, item: int) -> Callable[[str], Any]:
        async def run(request_id: str) -> dict[str, Any]:
            await self.gate.wait()
            self.ran.append(item)
            return {"line": item + 1, "answer": self.name, "reference": "a", "scores": {"exact_match": 1.0},
                    "model": "m", "latency_s": 0.01, "prompt_tokens": 1, "completion_tokens": 1, "energy_wh": None}

        return run

    def freeze(self) -> None:
        """Stops renewing (a gateway paused or cut off): its runner lives on, stalled,
        believing it still holds its leases."""
        self.gate.clear()
        self._renew = lambda lease, job_id: (True, "RUNNING")  # type: ignore[method-assign]


@pytest.fixture
async def gateways(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Gateway]]:
    monkeypatch.setattr(evaluations, "LEASE_S", 1.5)
    monkeypatch.setattr(evaluations, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(evaluations, "POLL_S", 0.2)
    made = [Gateway(name, postgres_url, tmp_path) for name in ("a", "b")]
    yield made
    for gateway in made:
        gateway.gate.set()
        await gateway.stop()
        gateway.store.close()


def _submit(gateway: Gateway) -> tuple[str, str]:
    """A job as the API creates it, in a new workspace: (workspace id, job id)."""
    workspace, key = gateway.tenancy.create_tenant(f"ws-{time.monotonic_ns()}", frozenset({Capability.INFERENCE}))
    principal = gateway.tenancy.authenticate(f"Bearer {key}")
    request = CreateEvaluation.model_validate({"dataset": "file-x", "targets": [{"model": "m"}],
                                               "metrics": [{"type": "exact_match"}]})
    with gateway.store.write_session() as session:
        job = EvaluationJobRow(id=new_id("eval"), workspace_id=workspace, api_key_id=principal.key_id,
                               kind=request.kind, status="QUEUED", spec=request.model_dump(mode="json", by_alias=True),
                               total_items=ITEMS, completed_items=0, failed_items=0, events=[])
        evaluations.transition(job, "QUEUED")
        session.add(job)
    return workspace, job.id


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _status(gateway: Gateway, workspace: str, job_id: str) -> str:
    return gateway.get(workspace, job_id).status


async def test_each_job_runs_once_whichever_gateways_poll(gateways: list[Gateway]) -> None:
    a, b = gateways
    jobs = [_submit(a) for _ in range(4)]
    await a.start()
    await b.start()
    await _until(lambda: all(_status(a, w, j) == "SUCCESS" for w, j in jobs), 30, "the jobs")
    # Every item of every job was answered exactly once, by one gateway or the other.
    assert sorted(a.ran + b.ran) == sorted(item for item in range(ITEMS) for _ in jobs)
    for workspace, job_id in jobs:
        _, results = b.results(workspace, job_id)
        assert [r["item_index"] for r in results] == list(range(ITEMS))
        assert len({r["answer"] for r in results}) == 1  # all by the one gateway that ran it
    await _until(lambda: _leases(a) == 0, 5, "the finished jobs' lease rows to go")


def _leases(gateway: Gateway) -> int:
    with gateway.store.session() as session:
        return session.query(LeaseRow).filter(LeaseRow.name.like("evaluation:%")).count()


async def test_a_stalled_gateways_job_is_taken_over_and_its_writes_fenced(gateways: list[Gateway]) -> None:
    a, b = gateways
    a.gate.clear()
    workspace, job_id = _submit(a)
    await a.start()
    await _until(lambda: job_id in a._tasks and _status(a, workspace, job_id) == "RUNNING", 10, "the job to run on a")
    a.freeze()  # a's runner waits, holding its lease, and renews it no more
    await b.start()
    await _until(lambda: _status(b, workspace, job_id) == "SUCCESS", 20, "b to take over and finish the job")
    assert sorted(b.ran) == list(range(ITEMS))
    finished = b.get(workspace, job_id)
    assert any(e["name"] == "taken-over" for e in finished.events)
    # a comes back: its first write is refused, so b's result stands.
    a.gate.set()
    await _until(lambda: job_id not in a._tasks, 10, "a's runner to give up")
    after = b.get(workspace, job_id)
    assert (after.status, after.completed_at, after.summary) == ("SUCCESS", finished.completed_at, finished.summary)
    assert after.events == finished.events
    _, results = b.results(workspace, job_id)
    assert {r["answer"] for r in results} == {"b"} and len(results) == ITEMS


async def test_a_cancellation_through_one_gateway_stops_the_job_on_another(gateways: list[Gateway]) -> None:
    a, b = gateways
    a.gate.clear()  # the job runs on a, and waits there
    workspace, job_id = _submit(a)
    await a.start()
    await _until(lambda: job_id in a._tasks and _status(a, workspace, job_id) == "RUNNING", 10, "the job to run on a")
    await b.start()
    assert (await b.cancel(workspace, job_id)).status == "CANCELLATION_REQUESTED"
    await _until(lambda: _status(b, workspace, job_id) == "CANCELLED", 10, "the cancellation to reach a")
    assert a.ran == [] and b.ran == []
    await _until(lambda: job_id not in a._tasks, 10, "a's runner to stop")
