"""Jobs shared by gateways on one real PostgreSQL database. A batch job runs on
one gateway at a time (its lease), is taken over when that gateway stops
renewing it, and the writes of a runner that lost its lease are refused. A
fine-tuning job is claimed by one training worker only.

The gateways are two `BatchJobs` over their own stores of the same database and
one home (a shared volume); their lines run through a small in-process
executor, since the point here is who runs a job, not what a line does."""

from __future__ import annotations

import asyncio
import threading
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tramontane.finetune import batch
from tramontane.finetune.batch import BatchJobs, BatchRequest, CreateBatchRequest
from tramontane.finetune.files import FileStore
from tramontane.finetune.models import FineTuningJobRow
from tramontane.finetune.worker import TrainingWorker
from tramontane.store import open_store
from tramontane.store.leases import LeaseRow
from tramontane.tenancy import Capability, Tenancy

LINES = 6


class Gateway:
    def __init__(self, name: str, url: str, home: Path):
        self.name = name
        self.store = open_store(url)
        self.files = FileStore(self.store, home, max_bytes=1 << 20)
        self.jobs = BatchJobs(self.store, self.files)
        self.jobs.execute = self._executor
        self.ran: list[str] = []  # the custom ids of the lines this gateway ran
        self.gate = asyncio.Event()  # lines wait on it: a gateway that stalls mid-job
        self.gate.set()

    async def _executor(self, job: Any) -> Callable[[BatchRequest], Any]:
        async def run(request: BatchRequest) -> dict[str, Any]:
            await self.gate.wait()
            self.ran.append(request.body["n"])
            return {"n": request.body["n"], "by": self.name}

        return run

    def freeze(self) -> None:
        """Stops renewing (a gateway paused or cut off): its runner lives on, stalled."""
        assert self.jobs._scanner is not None
        self.jobs._scanner.cancel()
        self.gate.clear()


@pytest.fixture
async def gateways(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Gateway]]:
    # Leases keep their default length (30 s), so that a busy machine never makes a
    # job change hands by accident; the takeover tests shorten them.
    monkeypatch.setattr(batch, "SCAN_S", 0.2)
    made = [Gateway(name, postgres_url, tmp_path) for name in ("a", "b")]
    yield made
    for gateway in made:
        gateway.gate.set()
        await gateway.jobs.stop()
        gateway.store.close()


def _submit(gateway: Gateway) -> tuple[str, str, str]:
    tenancy = Tenancy(gateway.store, home=gateway.files.home, pepper=b"test-pepper-0123456789abcdef")
    workspace, key = tenancy.create_tenant(f"ws-{time.monotonic_ns()}", frozenset({Capability.INFERENCE}))
    content = "".join(json.dumps({"custom_id": str(n), "body": {"n": str(n)}}) + "\n" for n in range(LINES))
    upload = gateway.files.create(workspace, "lines.jsonl", "batch", io.BytesIO(content.encode()))
    return workspace, tenancy.authenticate(f"Bearer {key}").key_id, upload.id


async def _create(gateway: Gateway, submitted: tuple[str, str, str]) -> str:
    workspace, key_id, file_id = submitted
    request = CreateBatchRequest(input_files=[file_id], endpoint="/v1/embeddings", model="m")
    job = await gateway.jobs.create(workspace, key_id, request)
    return job.id


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _outputs(gateway: Gateway, workspace: str, job_id: str) -> list[dict[str, Any]]:
    job = gateway.jobs.get(workspace, job_id)
    row = gateway.files.get(workspace, job.output_file)
    return [json.loads(line) for line in gateway.files.read(row).splitlines()]


async def test_each_job_runs_once_whichever_gateways_scan(gateways: list[Gateway]) -> None:
    a, b = gateways
    for gateway in gateways:
        await gateway.jobs.start()
    submitted = _submit(a)
    workspace = submitted[0]
    job_ids = [await _create(gateway, submitted) for gateway in (a, b, a, b)]
    await _until(lambda: all(a.jobs.get(workspace, j).status == "SUCCESS" for j in job_ids), 30, "the jobs")
    # Every line of every job ran exactly once, on one gateway or the other.
    assert sorted(a.ran + b.ran) == sorted(str(n) for n in range(LINES) for _ in job_ids)
    for job_id in job_ids:
        assert [line["custom_id"] for line in _outputs(b, workspace, job_id)] == [str(n) for n in range(LINES)]
        assert len({line["response"]["body"]["by"] for line in _outputs(b, workspace, job_id)}) == 1
    # A finished job's lease row goes (its runner drops it just after the status).
    def leases() -> int:
        with a.store.session() as session:
            return session.query(LeaseRow).filter(LeaseRow.name.like("batch:%")).count()

    await _until(lambda: leases() == 0, 10, "the finished jobs' leases to go")


async def test_a_stalled_gateways_job_is_taken_over_and_its_writes_fenced(
    gateways: list[Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "LEASE_S", 1.5)
    a, b = gateways
    a.gate.clear()
    await a.jobs.start()
    submitted = _submit(a)
    workspace = submitted[0]
    job_id = await _create(a, submitted)
    await _until(lambda: a.jobs.get(workspace, job_id).status == "RUNNING", 10, "the job to run on a")
    a.freeze()  # a's runner waits, holding its lease, and renews it no more
    await b.jobs.start()
    # b takes the job once a's lease runs out, and runs it whole.
    await _until(lambda: b.jobs.get(workspace, job_id).status == "SUCCESS", 20, "b to finish the job")
    assert sorted(b.ran) == [str(n) for n in range(LINES)]
    finished = b.jobs.get(workspace, job_id)
    # a comes back: whatever it runs now, its writes are refused, so b's result stands.
    a.gate.set()
    await _until(lambda: job_id not in a.jobs._tasks, 10, "a's runner to give up")
    after = b.jobs.get(workspace, job_id)
    assert (after.status, after.output_file, after.completed_at) == ("SUCCESS", finished.output_file,
                                                                      finished.completed_at)
    assert {line["response"]["body"]["by"] for line in _outputs(b, workspace, job_id)} == {"b"}


async def test_a_cancellation_through_one_gateway_stops_the_job_on_another(gateways: list[Gateway]) -> None:
    a, b = gateways
    a.gate.clear()  # the job runs on a, and waits there
    await a.jobs.start()
    submitted = _submit(a)
    workspace = submitted[0]
    job_id = await _create(a, submitted)
    await _until(lambda: a.jobs.get(workspace, job_id).status == "RUNNING", 10, "the job to run on a")
    await b.jobs.start()
    assert (await b.jobs.cancel(workspace, job_id)).status == "CANCELLATION_REQUESTED"
    await _until(lambda: b.jobs.get(workspace, job_id).status == "CANCELLED", 10, "the cancellation")
    assert a.ran == [] and b.ran == []


async def test_a_cancellation_left_by_a_dead_gateway_is_recorded(
    gateways: list[Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "LEASE_S", 1.5)
    a, b = gateways
    a.gate.clear()
    await a.jobs.start()
    submitted = _submit(a)
    workspace = submitted[0]
    job_id = await _create(a, submitted)
    await _until(lambda: a.jobs.get(workspace, job_id).status == "RUNNING", 10, "the job to run on a")
    a.freeze()
    # a dies: nothing of it acts any more, and its lease is left to run out.
    a.jobs._leases.clear()
    a.jobs._stopping = True
    tasks = list(a.jobs._tasks.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await b.jobs.start()
    assert (await b.jobs.cancel(workspace, job_id)).status == "CANCELLATION_REQUESTED"
    await _until(lambda: b.jobs.get(workspace, job_id).status == "CANCELLED", 20, "b to record the cancellation")
    assert b.ran == []


def test_training_workers_of_several_gateways_never_claim_a_job_twice(postgres_url: str, tmp_path: Path) -> None:
    stores = [open_store(postgres_url) for _ in range(3)]
    tenancy = Tenancy(stores[0], home=tmp_path, pepper=b"test-pepper-0123456789abcdef")
    workspace, _ = tenancy.create_tenant("ws", frozenset({Capability.INFERENCE}))
    with stores[0].write_session() as session:
        for _ in range(30):
            session.add(FineTuningJobRow(
                workspace_id=workspace, model="m", status="QUEUED", auto_start=True, training_files=[],
                validation_files=[], hyperparameters={}, events=[], checkpoints=[],
            ))
    workers = [TrainingWorker(store, None, tmp_path, lambda model: None) for store in stores]  # type: ignore[arg-type]
    claimed: list[list[str]] = [[] for _ in workers]
    start = threading.Barrier(len(workers))

    def claim_all(index: int) -> None:
        start.wait()
        while (job_id := workers[index]._claim()) is not None:
            claimed[index].append(job_id)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [job_id for ids in claimed for job_id in ids]
    assert len(every) == len(set(every)) == 30, [len(ids) for ids in claimed]
    for store in stores:
        store.close()
