"""The Batch API: JSONL request files in, JSONL result and error files out.

Jobs run as asyncio tasks in the server's event loop, their requests a few at a
time so the engine batches them with live traffic. A job interrupted by a
server stop runs again from the start at the next start (its output is written
only when it completes).
"""

from __future__ import annotations

import asyncio
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
CONCURRENT_REQUESTS = 8


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
        self._stopping = False

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
            job.status = CANCELLATION_REQUESTED if job.id in self._tasks else CANCELLED
            return job

    def delete(self, workspace_id: str, job_id: str) -> dict[str, Any]:
        with self.store.write_session() as session:
            job = self._owned(session, workspace_id, job_id)
            if job.status not in TERMINAL:
                raise Conflict(f"Batch job '{job_id}' is {job.status}; cancel it first", code="invalid_status")
            session.delete(job)
        return {"id": job_id, "object": "batch", "deleted": True}

    # -- running ------------------------------------------------------------------------

    async def run_pending(self) -> None:
        """Starts a task for every job waiting to run (new, or interrupted by a stop)."""

        def pending() -> list[str]:
            with self.store.session() as session:
                return list(session.scalars(select(BatchJobRow.id).where(BatchJobRow.status.in_((QUEUED, RUNNING)))))

        for job_id in await anyio.to_thread.run_sync(pending):
            if job_id not in self._tasks:
                self._tasks[job_id] = asyncio.create_task(self._run(job_id))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, job_id: str) -> None:
        try:
            await self._execute_job(job_id)
        except asyncio.CancelledError:
            if not self._stopping:
                await anyio.to_thread.run_sync(self._set, job_id, {"status": CANCELLED, "completed_at": utcnow()})
            raise
        except Exception as exc:
            log.exception("batch job %s failed", job_id)
            await anyio.to_thread.run_sync(
                self._set,
                job_id,
                {"status": FAILED, "completed_at": utcnow(), "errors": [{"message": str(exc), "count": 1}]},
            )
        finally:
            self._tasks.pop(job_id, None)

    def _set(self, job_id: str, values: dict[str, Any]) -> BatchJobRow:
        with self.store.write_session() as session:
            job = session.get(BatchJobRow, job_id)
            assert job is not None
            for name, value in values.items():
                setattr(job, name, value)
            return job

    async def _execute_job(self, job_id: str) -> None:
        assert self.execute is not None, "install the API before running batch jobs"
        job = await anyio.to_thread.run_sync(self._set, job_id, {"status": RUNNING, "started_at": utcnow()})
        requests = await anyio.to_thread.run_sync(self._read_requests, job)
        await anyio.to_thread.run_sync(self._set, job_id, {"total_requests": len(requests)})
        execute = await self.execute(job)
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
