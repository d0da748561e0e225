"""The Batch API: JSONL request files in, JSONL result and error files out.

Jobs run as asyncio tasks in the server's event loop, their requests a few at a
time so the engine batches them with live traffic. A job interrupted by a
server stop runs again from the start at the next start (its output is written
only when it completes).

With several gateways on one database, a job runs on one of them at a time: the
one holding its lease (a row named `batch:<id>`, store/leases.py), renewed every
`SCAN_S` and running out `LEASE_S` after the last renewal. Each gateway scans for
jobs nobody holds every `SCAN_S`, so the job of a gateway that died runs again
elsewhere once its lease runs out; every write of a job's runner is fenced by
the lease's token, so a runner that lost it records nothing. A cancellation
made through any gateway reaches the runner at its next scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio.to_thread
from sqlalchemy import func, select

from ..errors import APIError, Conflict, Invalid, TramontaneError, as_api_error
from ..store import Store
from ..store.leases import Fenced, Lease, new_holder_id
from ..store.types import new_id, utcnow
from ..tenancy import get_owned, owned
from .files import FileStore
from .jobs import unix
from .models import BatchJobRow
from .schemas import CreateBatchRequest

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCESS, FAILED = "QUEUED", "RUNNING", "SUCCESS", "FAILED"
CANCELLATION_REQUESTED, CANCELLED = "CANCELLATION_REQUESTED", "CANCELLED"
TERMINAL = frozenset({SUCCESS, FAILED, CANCELLED})
# A job in one of these needs a runner: to run it, or to record a cancellation
# that the gateway running it did not live to record.
_UNFINISHED = (QUEUED, RUNNING, CANCELLATION_REQUESTED)
CONCURRENT_REQUESTS = 8
LEASE_S = 30.0
SCAN_S = 5.0


@dataclass(frozen=True)
class BatchRequest:
    """One line of a batch job, as its executor runs it."""

    endpoint: str
    body: dict[str, Any]
    # `<job id>-<line index>`: the line's id in the output, and its usage's request id.
    request_id: str


# run(request) -> response body; raises a TramontaneError (or an APIError) for its line.
LineExecutor = Callable[[BatchRequest], Awaitable[dict[str, Any]]]
# executor(job) -> how its lines run: set up once per job, in the job's workspace,
# metered as the key that created it (`job.api_key_id`; None for jobs created
# before batch metering).
Executor = Callable[[BatchJobRow], Awaitable[LineExecutor]]


def _error_line(line_id: str, custom_id: Any, error: APIError) -> dict[str, Any]:
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": error.status, "body": error.body()},
        "error": {"message": error.message, "code": error.code},
    }


def counts(results: list[Any], failures: list[Any]) -> dict[str, int]:
    return {
        "completed_requests": len(results) + len(failures),
        "succeeded_requests": len(results),
        "failed_requests": len(failures),
    }


def _jsonl(lines: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


class BatchJobs:
    def __init__(self, store: Store, files: FileStore):
        self.store = store
        self.files = files
        self.execute: Executor | None = None  # set when the server installs the API
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, Lease] = {}
        self._lost: set[str] = set()  # jobs whose lease another gateway took
        self._stopping = False
        self._holder = new_holder_id()
        self._scanner: asyncio.Task[None] | None = None

    # -- API operations --------------------------------------------------------------

    async def create(self, workspace_id: str, api_key_id: str, request: CreateBatchRequest) -> BatchJobRow:
        job = await anyio.to_thread.run_sync(self._insert, workspace_id, api_key_id, request)
        await self.run_pending()
        return job

    def _insert(self, workspace_id: str, api_key_id: str, request: CreateBatchRequest) -> BatchJobRow:
        for file_id in request.input_files:
            if self.files.get(workspace_id, file_id).purpose != "batch":
                raise Invalid(f"File '{file_id}' was not uploaded with purpose 'batch'", param="input_files")
        job = BatchJobRow(
            id=new_id("batch"),
            workspace_id=workspace_id,
            api_key_id=api_key_id,
            input_files=request.input_files,
            endpoint=request.endpoint,
            model=request.model,
            job_metadata=request.metadata,
            status=QUEUED,
            errors=[],
        )
        with self.store.write_session() as session:
            session.add(job)
        return job

    def _owned(self, session: Any, workspace_id: str, job_id: str) -> BatchJobRow:
        return get_owned(session, BatchJobRow, job_id, workspace_id, "batch job", code="job_not_found", param="job_id")

    def get(self, workspace_id: str, job_id: str) -> BatchJobRow:
        with self.store.session() as session:
            return self._owned(session, workspace_id, job_id)

    def list(
        self,
        workspace_id: str,
        *,
        page: int,
        page_size: int,
        model: str | None,
        status: list[str] | None,
        created_after: datetime | None,
    ) -> tuple[list[BatchJobRow], int]:
        """One page of the workspace's batch jobs, newest first, and how many match in all."""
        query = owned(BatchJobRow, workspace_id)
        if model is not None:
            query = query.where(BatchJobRow.model == model)
        if status:
            query = query.where(BatchJobRow.status.in_(status))
        if created_after is not None:
            query = query.where(BatchJobRow.created_at > created_after)
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            jobs = session.scalars(
                query.order_by(BatchJobRow.created_at.desc(), BatchJobRow.id).offset(page * page_size).limit(page_size)
            ).all()
            return list(jobs), total

    def page_after(self, workspace_id: str, after: str | None, limit: int) -> tuple[list[BatchJobRow], bool]:
        """Up to `limit` jobs, newest first, from the one after job `after` (OpenAI's
        cursor; an unknown cursor starts from the newest), and whether more follow."""
        query = owned(BatchJobRow, workspace_id)
        with self.store.session() as session:
            cursor = session.get(BatchJobRow, after) if after else None
            if cursor is not None and cursor.workspace_id == workspace_id:
                query = query.where(
                    (BatchJobRow.created_at < cursor.created_at)
                    | ((BatchJobRow.created_at == cursor.created_at) & (BatchJobRow.id > cursor.id))
                )
            ordered = query.order_by(BatchJobRow.created_at.desc(), BatchJobRow.id).limit(limit + 1)
            jobs = session.scalars(ordered).all()
            return list(jobs[:limit]), len(jobs) > limit

    async def cancel(self, workspace_id: str, job_id: str) -> BatchJobRow:
        job = await anyio.to_thread.run_sync(self._request_cancel, workspace_id, job_id)
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()  # its handler records CANCELLED once the task has stopped
        return job

    def _request_cancel(self, workspace_id: str, job_id: str) -> BatchJobRow:
        with self.store.write_session() as session:
            job = self._owned(session, workspace_id, job_id)
            if job.status in TERMINAL:
                raise Conflict(f"Batch job '{job_id}' is already {job.status}", code="invalid_status")
            # A job running here or on another gateway stops at its runner's next look.
            running = job.id in self._tasks or job.status == RUNNING
            job.status = CANCELLATION_REQUESTED if running else CANCELLED
            return job

    def delete(self, workspace_id: str, job_id: str) -> dict[str, Any]:
        with self.store.write_session() as session:
            job = self._owned(session, workspace_id, job_id)
            if job.status not in TERMINAL:
                raise Conflict(f"Batch job '{job_id}' is {job.status}; cancel it first", code="invalid_status")
            session.delete(job)
        return {"id": job_id, "object": "batch", "deleted": True}

    # -- running ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.run_pending()
        self._scanner = asyncio.create_task(self._scan(), name="batch jobs scan")

    async def run_pending(self) -> None:
        """Starts a task for every job waiting to run (new, interrupted by a stop, or
        left by a gateway that died) whose lease this gateway could take."""

        def claim() -> list[tuple[str, Lease]]:
            with self.store.session() as session:
                pending = list(
                    session.scalars(select(BatchJobRow.id).where(BatchJobRow.status.in_(_UNFINISHED)))
                )
            claimed = []
            for job_id in pending:
                if job_id in self._tasks:
                    continue
                lease = Lease(self.store, "", name=f"batch:{job_id}", holder=self._holder, ttl_s=LEASE_S)
                if lease.try_acquire() is not None:
                    claimed.append((job_id, lease))
            return claimed

        for job_id, lease in await anyio.to_thread.run_sync(claim):
            if self._stopping:
                await anyio.to_thread.run_sync(lease.release)
                continue
            self._leases[job_id] = lease
            self._tasks[job_id] = asyncio.create_task(self._run(job_id))

    async def _scan(self) -> None:
        while True:
            await asyncio.sleep(SCAN_S)
            try:
                await self._keep_running()
                await self.run_pending()
            except Exception:  # the database is away: try again at the next scan
                log.exception("cannot scan the batch jobs")

    async def _keep_running(self) -> None:
        """Renews the leases of the jobs running here, stopping those another
        gateway took or that were cancelled through another gateway."""

        def look() -> tuple[list[str], list[str]]:
            lost = [job_id for job_id, lease in list(self._leases.items()) if not lease.renew()]
            with self.store.session() as session:
                cancelled = list(session.scalars(select(BatchJobRow.id).where(
                    BatchJobRow.id.in_(list(self._tasks)), BatchJobRow.status == CANCELLATION_REQUESTED
                )))
            return lost, cancelled

        lost, cancelled = await anyio.to_thread.run_sync(look)
        for job_id in lost:
            log.warning("batch job %s: another gateway took its lease", job_id)
            self._lost.add(job_id)
        for job_id in {*lost, *cancelled}:
            if (task := self._tasks.get(job_id)) is not None:
                task.cancel()

    async def stop(self) -> None:
        self._stopping = True
        if self._scanner is not None:
            self._scanner.cancel()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, job_id: str) -> None:
        interrupted = False  # by this gateway's stop: the job is to resume elsewhere
        try:
            await self._execute_job(job_id)
        except asyncio.CancelledError:
            interrupted = self._stopping
            if not self._stopping and job_id not in self._lost:
                await self._record(job_id, {"status": CANCELLED, "completed_at": utcnow()})
            raise
        except Exception as exc:
            if _fenced(exc):
                log.warning("batch job %s: another gateway runs it now", job_id)
                return
            log.exception("batch job %s failed", job_id)
            await self._record(
                job_id, {"status": FAILED, "completed_at": utcnow(), "errors": [{"message": str(exc), "count": 1}]}
            )
        finally:
            self._tasks.pop(job_id, None)
            self._lost.discard(job_id)
            if (lease := self._leases.pop(job_id, None)) is not None:
                # Released at once after a stop: another gateway resumes the job at its
                # next scan. Otherwise the job is finished and its lease row goes.
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(lease.release if interrupted else lease.drop)

    async def _record(self, job_id: str, values: dict[str, Any]) -> None:
        """A final status, unless another gateway runs the job now."""
        with contextlib.suppress(Fenced):
            await anyio.to_thread.run_sync(self._set, job_id, values)

    def _begin(self, job_id: str) -> BatchJobRow | None:
        """Marks the job RUNNING, unless, between the scan that found it and the
        lease, it finished or was cancelled (through any gateway): then None."""
        with self.store.write_session() as session:
            if (lease := self._leases.get(job_id)) is not None:
                lease.fence(session, lease.token)
            job = session.get(BatchJobRow, job_id, with_for_update=True)
            if job is None or job.status in TERMINAL:
                return None
            if job.status == CANCELLATION_REQUESTED:
                job.status, job.completed_at = CANCELLED, utcnow()
                return None
            job.status = RUNNING
            job.started_at = job.started_at or utcnow()
            return job

    def _set(self, job_id: str, values: dict[str, Any]) -> BatchJobRow:
        with self.store.write_session() as session:
            if (lease := self._leases.get(job_id)) is not None:
                lease.fence(session, lease.token)
            job = session.get(BatchJobRow, job_id)
            assert job is not None
            for name, value in values.items():
                setattr(job, name, value)
            return job

    async def _execute_job(self, job_id: str) -> None:
        assert self.execute is not None, "install the API before running batch jobs"
        job = await anyio.to_thread.run_sync(self._begin, job_id)
        if job is None:
            return
        requests = await anyio.to_thread.run_sync(self._read_requests, job)
        await anyio.to_thread.run_sync(self._set, job_id, {"total_requests": len(requests)})
        execute = await self.execute(job)
        try:
            await self._run_lines(job, requests, execute)
        finally:
            # What the job's lines ran on (a Ray actor) goes with the job, however it ended.
            if (close := getattr(execute, "aclose", None)) is not None:
                await close()

    async def _run_lines(
        self, job: BatchJobRow, requests: list[tuple[Any, dict[str, Any] | TramontaneError]], execute: LineExecutor
    ) -> None:
        job_id = job.id
        # (input position, result line): written in input order whatever order they finish in.
        results: list[tuple[int, dict[str, Any]]] = []
        failures: list[tuple[int, dict[str, Any]]] = []
        gate = asyncio.Semaphore(CONCURRENT_REQUESTS)
        progress = asyncio.Lock()

        async def one(index: int, custom_id: Any, body: dict[str, Any] | TramontaneError) -> None:
            line_id = f"{job.id}-{index}"
            async with gate:
                try:
                    if isinstance(body, TramontaneError):
                        raise body
                    response = await execute(BatchRequest(job.endpoint, body, line_id))
                    line = {"id": line_id, "custom_id": custom_id, "response": {"status_code": 200, "body": response}}
                    results.append((index, {**line, "error": None}))
                except (APIError, TramontaneError) as exc:  # this line's own failure, in its result
                    failures.append((index, _error_line(line_id, custom_id, as_api_error(exc))))
            async with progress:  # one write at a time, so the counts only grow
                await anyio.to_thread.run_sync(self._set, job_id, counts(results, failures))

        async with asyncio.TaskGroup() as group:
            for index, (custom_id, body) in enumerate(requests):
                group.create_task(one(index, custom_id, body))
        ordered = [line for _, line in sorted(results, key=lambda pair: pair[0])]
        ordered_failures = [line for _, line in sorted(failures, key=lambda pair: pair[0])]
        await anyio.to_thread.run_sync(self._write_results, job, ordered, ordered_failures)

    def _read_requests(self, job: BatchJobRow) -> list[tuple[Any, dict[str, Any] | TramontaneError]]:
        """(custom_id, body) of each input line; a bad line becomes its own error result."""
        requests: list[tuple[Any, dict[str, Any] | TramontaneError]] = []
        for file_id in job.input_files:
            row = self.files.get(job.workspace_id, file_id)
            for number, raw in enumerate(self.files.read(row).split(b"\n"), start=1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                    body = dict(line["body"])
                except (ValueError, KeyError, TypeError):
                    message = f'{row.filename}: line {number}: expected {{"custom_id": ..., "body": {{...}}}}'
                    requests.append((None, Invalid(message, code="invalid_batch_line")))
                    continue
                url = line.get("url")
                if url is not None and url != job.endpoint:  # OpenAI's lines name their endpoint
                    message = f"{row.filename}: line {number}: url {url!r} is not the batch's endpoint {job.endpoint}"
                    requests.append((line.get("custom_id"), Invalid(message, code="invalid_batch_line")))
                    continue
                if job.model is not None:
                    body.setdefault("model", job.model)
                requests.append((line.get("custom_id"), body))
        return requests

    def _write_results(self, job: BatchJobRow, results: list[dict[str, Any]], failures: list[dict[str, Any]]) -> None:
        values: dict[str, Any] = {"status": SUCCESS, "completed_at": utcnow(), **counts(results, failures)}
        if results:
            values["output_file"] = self.files.create(
                job.workspace_id,
                f"{job.id}-output.jsonl",
                "batch",
                _jsonl(results),
                sample_type="batch_result",
                origin="tramontane",
            ).id
        if failures:
            values["error_file"] = self.files.create(
                job.workspace_id,
                f"{job.id}-error.jsonl",
                "batch",
                _jsonl(failures),
                sample_type="batch_error",
                origin="tramontane",
            ).id
            by_message: dict[str, int] = {}
            for failure in failures:
                by_message[failure["error"]["message"]] = by_message.get(failure["error"]["message"], 0) + 1
            values["errors"] = [{"message": message, "count": count} for message, count in by_message.items()]
        self._set(job.id, values)


def _fenced(exc: BaseException) -> bool:
    """Whether `exc` is, or (from a task group) holds, a fenced write."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(Fenced) is not None
    return isinstance(exc, Fenced)
