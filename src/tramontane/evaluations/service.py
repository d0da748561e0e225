"""`Evaluations`: evaluation and red-team jobs, from creation (everything checked
before the job is accepted) to their background runs and results.

Jobs run as asyncio tasks in the server's event loop, a few items at a time, so
the engine batches them with live traffic (at batch priority). Each finished
item is appended to the job's results file at once; a job interrupted by a stop
goes back to the queue and resumes after the items it finished.

With several gateways on one database, a job runs on the one holding its lease
(a row named `evaluation:<id>`, store/leases.py), renewed every HEARTBEAT_S and
running out LEASE_S after the last renewal: the job of a gateway that died is
resumed by another once its lease runs out, a stop releases it at once, and
every write of a runner is fenced by the lease's token, so a runner that lost
its lease records nothing more. A cancellation made through any gateway reaches
the runner at its next renewal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..agents.service import AgentsService
from ..errors import APIError, Conflict, Invalid, Limited, TramontaneError, as_api_error
from ..finetune.files import FileStore
from ..finetune.ray_batch import RayBatch
from ..inference.metrics import Metrics
from ..inference.registry import ModelRegistry
from ..store.leases import Fenced, Lease, new_holder_id
from ..store.types import new_id, utcnow
from ..tenancy import Principal, Tenancy, get_owned, owned
from ..tenancy.directory import workspace_dir
from . import dataset, redteam, report
from . import metrics as scoring
from .calls import Caller
from .models import EvaluationJobRow
from .schemas import CreateEvaluation, Metric, Target

QUEUED, RUNNING, SUCCESS, FAILED = "QUEUED", "RUNNING", "SUCCESS", "FAILED"
CANCELLATION_REQUESTED, CANCELLED = "CANCELLATION_REQUESTED", "CANCELLED"
TERMINAL = frozenset({SUCCESS, FAILED, CANCELLED})
DATASET_PURPOSES = ("evals", "fine-tune", "batch", "user_data")
CONCURRENT_ITEMS = 4
MAX_ACTIVE_JOBS = 4  # per workspace: queued or running
# A job in one of these needs a runner: to run it, or to record the cancellation
# that the gateway running it did not live to record.
UNFINISHED = (QUEUED, RUNNING, CANCELLATION_REQUESTED)
POLL_S = 2.0
HEARTBEAT_S = 5.0
LEASE_S = 30.0
RESULTS = "results.jsonl"

log = logging.getLogger(__name__)


def _event(job: EvaluationJobRow, name: str, **data: Any) -> None:
    now = utcnow()
    job.modified_at = now
    job.events = [*job.events, {"name": name, "data": data, "created_at": int(now.timestamp())}]


def transition(job: EvaluationJobRow, status: str, **data: Any) -> None:
    job.status = status
    _event(job, "status-updated", status=status, **data)


class Evaluations:
    def __init__(
        self,
        tenancy: Tenancy,
        files: FileStore,
        models: ModelRegistry,
        metrics: Metrics,
        agents: AgentsService | None,
        ray: RayBatch | None = None,
    ):
        """`ray`: the Ray job executor's side for model calls; with it, a job's
        calls to the platform's base models run on a Ray actor of the job's own
        (finetune/ray_batch.py), while agents and fine-tuned adapters are called
        here."""
        self.tenancy = tenancy
        self.store = tenancy.store
        self.files = files
        self.models = models
        self.metrics = metrics
        self.agents = agents
        self.ray = ray
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, Lease] = {}
        self._lost: set[str] = set()  # jobs whose lease another gateway took
        self._holder = new_holder_id()
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def caller(self, principal: Principal, job_id: str) -> Caller:
        return Caller(self.models, self.metrics, self.tenancy, self.agents, principal, job_id)

    def results_path(self, job: EvaluationJobRow) -> Path:
        return workspace_dir(self.tenancy.home, job.workspace_id) / "evaluations" / job.id / RESULTS

    # -- creation: everything that can be checked is checked before the job exists

    def create(self, principal: Principal, request: CreateEvaluation) -> EvaluationJobRow:
        job_id = new_id("eval")
        caller = self.caller(principal, job_id)
        for index, target in enumerate(request.targets):
            try:
                caller.check_target(target)
            except TramontaneError as exc:
                raise type(exc)(f"targets[{index}]: {exc.message}", code=exc.code, param="targets") from None
        total = self._check_work(caller, request)
        with self.store.write_session() as session:
            active = session.scalar(
                select(func.count()).select_from(
                    owned(EvaluationJobRow, principal.workspace_id)
                    .where(EvaluationJobRow.status.not_in(TERMINAL))
                    .subquery()
                )
            )
            if (active or 0) >= MAX_ACTIVE_JOBS:
                raise Limited(
                    f"a workspace runs at most {MAX_ACTIVE_JOBS} evaluations at once; wait for one to end",
                    code="too_many_evaluations",
                    retry_after_s=30,
                )
            job = EvaluationJobRow(
                id=job_id,
                workspace_id=principal.workspace_id,
                api_key_id=principal.key_id,
                kind=request.kind,
                name=request.name,
                status=QUEUED,
                spec=request.model_dump(mode="json", by_alias=True, exclude={"metadata", "name"}),
                total_items=total,
                completed_items=0,
                failed_items=0,
                events=[],
                job_metadata=request.metadata,
            )
            transition(job, QUEUED)
            session.add(job)
        self._wake.set()
        return job

    def _check_work(self, caller: Caller, request: CreateEvaluation) -> int:
        """Checks the dataset or attack families and the models that score; returns the number of items."""
        if request.red_team is not None:
            if request.red_team.judge_model is not None:
                caller.check_chat_model(request.red_team.judge_model, "red_team.judge_model")
            attacks = redteam.select(request.red_team.families, request.red_team.attempts_per_family)
            return len(attacks) * len(request.targets)
        assert request.dataset is not None and request.metrics is not None
        items = self._items(caller.workspace_id, request.dataset)
        for index, metric in enumerate(request.metrics):
            scoring.check(metric)
            if metric.type == "llm_judge":
                caller.check_chat_model(metric.model or "", f"metrics[{index}].model")
            if metric.type == "embedding_similarity":
                caller.check_embedding_model(metric.model or "", f"metrics[{index}].model")
            if metric.type in scoring.NEEDS_REFERENCE:
                missing = [str(i.line) for i in items if i.reference is None]
                if missing:
                    raise Invalid(
                        f"metric {metric.type} needs a reference; lines without one: {', '.join(missing[:20])}",
                        code="invalid_dataset",
                        param="dataset",
                    )
        return len(items) * len(request.targets)

    def _items(self, workspace_id: str, file_id: str) -> list[dataset.Item]:
        row = self.files.get(workspace_id, file_id)
        if row.purpose not in DATASET_PURPOSES:
            raise Invalid(f"File '{file_id}' has purpose '{row.purpose}'; upload datasets with purpose 'evals'",
                          param="dataset")
        return dataset.parse(self.files.read(row), row.filename)

    # -- reading and cancelling

    def _owned(self, session: Any, workspace_id: str, job_id: str) -> EvaluationJobRow:
        return get_owned(session, EvaluationJobRow, job_id, workspace_id, "evaluation", code="evaluation_not_found",
                         param="evaluation_id")

    def get(self, workspace_id: str, job_id: str) -> EvaluationJobRow:
        with self.store.session() as session:
            return self._owned(session, workspace_id, job_id)

    def list(self, workspace_id: str, *, page: int, page_size: int, kind: str | None, status: str | None
             ) -> tuple[list[EvaluationJobRow], int]:
        query = owned(EvaluationJobRow, workspace_id)
        if kind is not None:
            query = query.where(EvaluationJobRow.kind == kind)
        if status is not None:
            query = query.where(EvaluationJobRow.status == status)
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(EvaluationJobRow.created_at.desc(), EvaluationJobRow.id)
                .offset(page * page_size).limit(page_size)
            ).all()
        return list(rows), total

    async def cancel(self, workspace_id: str, job_id: str) -> EvaluationJobRow:
        def request() -> EvaluationJobRow:
            with self.store.write_session() as session:
                job = self._owned(session, workspace_id, job_id)
                if job.status in TERMINAL:
                    raise Conflict(f"Evaluation '{job_id}' is already {job.status}", code="invalid_status")
                transition(job, CANCELLATION_REQUESTED if job.status == RUNNING else CANCELLED)
                return job

        job = await anyio.to_thread.run_sync(request)
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()  # its handler records CANCELLED once it has stopped
        return job

    def results(self, workspace_id: str, job_id: str) -> tuple[EvaluationJobRow, list[dict[str, Any]]]:
        """The job and its finished items, in item order (target by target)."""
        job = self.get(workspace_id, job_id)
        return job, self._read_results(job)

    def _read_results(self, job: EvaluationJobRow) -> list[dict[str, Any]]:
        path = self.results_path(job)
        if not path.exists():
            return []
        rows = {}
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(raw)
            except ValueError:  # a line cut short by a crash: its item runs again
                continue
            rows[(row["target_index"], row["item_index"])] = row
        return [rows[key] for key in sorted(rows)]

    def comparison(self, workspace_id: str, job_id: str, baseline: str, candidate: str, metric: str
                   ) -> dict[str, Any]:
        job, results = self.results(workspace_id, job_id)
        if job.kind != "evaluation":
            raise Invalid("a red-team run has no comparison; read its report", param="evaluation_id")
        labels = [Target.model_validate(t).label for t in job.spec["targets"]]
        indexes = []
        for name, value in (("baseline", baseline), ("candidate", candidate)):
            if value not in labels:
                raise Invalid(f"{name} '{value}' is not a target of this evaluation: {', '.join(labels)}",
                              param=name)
            indexes.append(labels.index(value))
        names = report.metric_names([Metric.model_validate(m) for m in job.spec["metrics"]])
        return report.compare(results, labels, names, indexes[0], indexes[1], metric)

    # -- running

    async def start(self) -> None:
        self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        """Sends the jobs running here back to the queue, their leases released for
        another gateway (or the next start) to resume them at once."""
        self._stopping = True
        self._wake.set()
        if self._poller is not None:
            await self._poller  # not cancelled: a claim in flight would be lost
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self) -> None:
        """Claims jobs while there are some: new ones, those a stop sent back to the
        queue, and those of a gateway that died."""
        while not self._stopping:
            try:
                claimed = await anyio.to_thread.run_sync(self._claim_all)
            except Exception:  # the database is away: try again at the next poll
                log.exception("cannot claim evaluations")
                claimed = []
            for job_id, lease in claimed:
                if self._stopping:  # claimed as the server stops: back to the queue
                    await anyio.to_thread.run_sync(self._give_back, job_id, lease)
                    continue
                self._leases[job_id] = lease
                self._tasks[job_id] = asyncio.create_task(self._run(job_id))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    def _give_back(self, job_id: str, lease: Lease) -> None:
        self._leases[job_id] = lease
        try:
            self._finish(job_id, QUEUED, {"reason": "the server stopped"})
            lease.release()
        except Fenced:
            pass
        finally:
            self._leases.pop(job_id, None)

    def _claim_all(self) -> list[tuple[str, Lease]]:
        with self.store.session() as session:
            pending = session.scalars(
                select(EvaluationJobRow.id)
                .where(EvaluationJobRow.status.in_(UNFINISHED))
                .order_by(EvaluationJobRow.created_at)
            ).all()
        claimed = []
        for job_id in pending:
            if job_id in self._tasks or self._stopping:
                continue
            lease = Lease(self.store, "", name=f"evaluation:{job_id}", holder=self._holder, ttl_s=LEASE_S)
            if lease.try_acquire() is None:
                continue  # another gateway runs it
            if self._begin(job_id, lease):
                claimed.append((job_id, lease))
            else:
                lease.drop()
        return claimed

    def _begin(self, job_id: str, lease: Lease) -> bool:
        """Marks the job RUNNING under `lease`, unless it ended meanwhile, or its
        cancellation was left unrecorded by a gateway that died (recorded now)."""
        with self.store.write_session() as session:
            lease.fence(session, lease.token)
            job = session.get(EvaluationJobRow, job_id, with_for_update=True)
            if job is None or job.status in TERMINAL:
                return False
            if job.status == CANCELLATION_REQUESTED:
                job.completed_at = utcnow()
                transition(job, CANCELLED)
                return False
            if job.status == QUEUED:
                transition(job, RUNNING)
            else:
                _event(job, "taken-over", reason="the gateway running it stopped answering")
            job.started_at = job.started_at or utcnow()
            return True

    @contextmanager
    def _write(self, job_id: str) -> Iterator[Session]:
        """A write session of the job's runner, refused (`Fenced`) once another
        gateway holds the job's lease."""
        with self.store.write_session() as session:
            if (lease := self._leases.get(job_id)) is not None:
                lease.fence(session, lease.token)
            yield session

    async def _run(self, job_id: str) -> None:
        try:
            await self._execute(job_id)
        except asyncio.CancelledError:
            if job_id not in self._lost:
                status, data = (QUEUED, {"reason": "the server stopped"}) if self._stopping else (CANCELLED, {})
                await self._record(job_id, status, data)
            raise
        except Exception as exc:
            if _fenced(exc):
                log.warning("evaluation %s: another gateway runs it now", job_id)
                return
            log.exception("evaluation %s failed", job_id)
            error = as_api_error(exc).message if isinstance(exc, TramontaneError | APIError) else str(exc)
            await self._record(job_id, FAILED, {"error": error})
        finally:
            self._tasks.pop(job_id, None)
            self._lost.discard(job_id)
            if (lease := self._leases.pop(job_id, None)) is not None:
                # Released at once after a stop, for another gateway (or the next
                # start) to resume the job; a finished job's lease row goes.
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(lease.release if self._stopping else lease.drop)

    async def _record(self, job_id: str, status: str, data: dict[str, Any]) -> None:
        """A final status (or back to the queue), unless another gateway runs the job now."""
        with contextlib.suppress(Fenced):
            await anyio.to_thread.run_sync(self._finish, job_id, status, data)

    def _finish(self, job_id: str, status: str, data: dict[str, Any], summary: dict[str, Any] | None = None) -> None:
        with self._write(job_id) as session:
            job = session.get(EvaluationJobRow, job_id)
            if job is None or job.status in TERMINAL:  # erased with its workspace, or ended
                return
            if status == QUEUED and job.status != RUNNING:
                return  # cancelled meanwhile
            if status in TERMINAL:
                job.completed_at = utcnow()
            if summary is not None:
                job.summary = summary
            transition(job, status, **data)

    def _load(self, job_id: str) -> tuple[EvaluationJobRow, Principal | None, list[dict[str, Any]]]:
        with self.store.session() as session:
            job = session.get(EvaluationJobRow, job_id)
            assert job is not None
            session.expunge(job)
        principal = self.tenancy.key_principal(job.api_key_id) if job.api_key_id else None
        return job, principal, self._read_results(job)

    async def _execute(self, job_id: str) -> None:
        job, principal, done = await anyio.to_thread.run_sync(self._load, job_id)
        if principal is None:
            raise RuntimeError("the key that created the evaluation was erased")
        caller = self.caller(principal, job.id)
        caller.remote = self.ray.lines(job.id) if self.ray is not None else None
        try:
            await self._execute_with(job, caller, done)
        finally:
            # The job's Ray actor ends with this run of the job, however it ended.
            if caller.remote is not None:
                await caller.remote.aclose()

    async def _execute_with(self, job: EvaluationJobRow, caller: Caller, done: list[dict[str, Any]]) -> None:
        job_id = job.id
        request = CreateEvaluation.model_validate(job.spec)
        labels = [t.label for t in request.targets]
        work = await anyio.to_thread.run_sync(self._work, job, request)
        finished = {(r["target_index"], r["item_index"]) for r in done}
        if finished:
            await anyio.to_thread.run_sync(self._note, job_id, "resumed", {"items_done": len(finished)})
        path = self.results_path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        gate = asyncio.Semaphore(CONCURRENT_ITEMS)
        writing = asyncio.Lock()
        counts = {"completed": len(finished), "failed": sum(1 for r in done if r.get("error"))}
        this_run = asyncio.current_task()
        assert this_run is not None

        async def one(target_index: int, item_index: int, run: Any) -> None:
            async with gate:
                key = f"{job.id}-{target_index}-{item_index}"
                try:
                    line = await run(key)
                except (TramontaneError, APIError) as exc:
                    line = {"error": as_api_error(exc).message}
                line = {"target_index": target_index, "target": labels[target_index], "item_index": item_index,
                        **line}
            async with writing:
                counts["completed"] += 1
                counts["failed"] += 1 if line.get("error") else 0
                status = await anyio.to_thread.run_sync(
                    self._save_item, job_id, path, line, counts["completed"], counts["failed"]
                )
                if status != RUNNING:  # cancelled elsewhere, or erased with its workspace
                    this_run.cancel()

        heartbeat = asyncio.create_task(self._heartbeat(job_id, this_run))
        try:
            async with asyncio.TaskGroup() as group:
                for target_index, item_index, run in work(caller):
                    if (target_index, item_index) not in finished:
                        group.create_task(one(target_index, item_index, run))
        finally:
            heartbeat.cancel()
        results = await anyio.to_thread.run_sync(self._read_results, job)
        if request.kind == "evaluation":
            assert request.metrics is not None
            summary = report.summary(results, labels, request.metrics)
        else:
            summary = redteam.report(results, labels)
        await anyio.to_thread.run_sync(self._finish, job_id, SUCCESS, {}, summary)

    def _work(self, job: EvaluationJobRow, request: CreateEvaluation) -> Any:
        """work(caller) -> (target index, item index, run(request_id) -> result line) for every item."""
        if request.red_team is not None:
            red = request.red_team
            attacks = redteam.select(red.families, red.attempts_per_family)
            args = request.completion_args.model_dump(exclude_none=True)

            def red_work(caller: Caller) -> Any:
                for t, target in enumerate(request.targets):
                    for i, attack in enumerate(attacks):
                        yield t, i, _bind(redteam.attempt, caller, job.id, attack, target, red.judge_model, args)

            return red_work
        assert request.dataset is not None and request.metrics is not None
        try:
            items = self._items(job.workspace_id, request.dataset)
        except TramontaneError as exc:
            raise RuntimeError(f"the dataset changed since the evaluation was created: {exc.message}") from None
        names = report.metric_names(request.metrics)

        def eval_work(caller: Caller) -> Any:
            for t, target in enumerate(request.targets):
                for item in items:
                    yield t, item.index, _bind(score_item, caller, request, names, target, item)

        return eval_work

    def _save_item(self, job_id: str, path: Path, line: dict[str, Any], completed: int, failed: int) -> str | None:
        """Appends an item's result and records the counts, under the job's lease (a
        runner that lost it adds nothing to the results); returns the job's status
        (a cancellation made through another gateway shows here)."""
        with self._write(job_id) as session:
            job = session.get(EvaluationJobRow, job_id)
            if job is None:
                return None
            _append(path, line)
            job.completed_items, job.failed_items = completed, failed
            job.modified_at = utcnow()
            return job.status

    def _note(self, job_id: str, name: str, data: dict[str, Any]) -> None:
        with self._write(job_id) as session:
            job = session.get(EvaluationJobRow, job_id)
            if job is not None:
                _event(job, name, **data)

    async def _heartbeat(self, job_id: str, run: asyncio.Task[Any]) -> None:
        """Renews the job's lease while long items (an agent's run) go on, and stops
        the run when another gateway took the lease or the job was cancelled there."""
        lease = self._leases[job_id]
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                held, status = await anyio.to_thread.run_sync(self._renew, lease, job_id)
            except Exception:  # the database is away: the lease may still hold at the next try
                log.exception("evaluation %s: cannot renew its lease", job_id)
                continue
            if not held:
                log.warning("evaluation %s: another gateway took its lease", job_id)
                self._lost.add(job_id)
            if not held or status != RUNNING:
                run.cancel()
                return

    def _renew(self, lease: Lease, job_id: str) -> tuple[bool, str | None]:
        if not lease.renew():
            return False, None
        with self.store.session() as session:
            return True, session.scalar(select(EvaluationJobRow.status).where(EvaluationJobRow.id == job_id))


def _fenced(exc: BaseException) -> bool:
    """Whether `exc` is, or (from a task group) holds, a fenced write."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(Fenced) is not None
    return isinstance(exc, Fenced)


def _bind(function: Any, *args: Any) -> Any:
    async def run(request_id: str) -> dict[str, Any]:
        return await function(*args, request_id)

    return run


def _append(path: Path, line: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")


async def score_item(
    caller: Caller,
    request: CreateEvaluation,
    names: list[str],
    target: Target,
    item: dataset.Item,
    request_id: str,
) -> dict[str, Any]:
    """One target's answer to one item, scored by every metric: the item's result line."""
    args = request.completion_args.model_dump(exclude_none=True)
    answer = await caller.answer(target, item.messages, args, request_id)
    scores: dict[str, float | None] = {}
    judgements: dict[str, Any] = {}
    assert request.metrics is not None
    for metric, name in zip(request.metrics, names, strict=True):
        if metric.type == "embedding_similarity":
            scores[name] = await _similarity(caller, metric, answer.text, item.reference, f"{request_id}-{name}")
        elif metric.type == "llm_judge":
            verdict = await _judge(caller, metric, item, answer.text, f"{request_id}-{name}")
            judgements[name] = verdict
            scores[name] = scoring.judge_score(verdict) if "score" in verdict else None
        else:
            scores[name] = scoring.deterministic(metric, answer.text, item.reference)
    line: dict[str, Any] = {
        "line": item.line,
        "answer": answer.text,
        "reference": item.reference,
        "scores": scores,
        "model": answer.model,
        "latency_s": answer.latency_s,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "energy_wh": answer.energy_wh,
        "metadata": item.metadata,
    }
    if judgements:
        line["judgements"] = judgements
    if answer.tool_calls:
        line["tool_calls"] = answer.tool_calls
    return line


async def _similarity(caller: Caller, metric: Metric, answer: str, reference: str | None, request_id: str
                      ) -> float | None:
    if reference is None:
        return None
    vectors = await caller.embed(metric.model or "", [answer or " ", reference or " "], request_id)
    a, b = vectors
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return max(0.0, float(a @ b) / norm) if norm and not math.isnan(norm) else 0.0


async def _judge(caller: Caller, metric: Metric, item: dataset.Item, answer: str, request_id: str
                 ) -> dict[str, Any]:
    response_format = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": scoring.JUDGE_SCHEMA}}
    judged = await caller.chat(
        metric.model or "",
        scoring.judge_messages(metric.rubric or "", item.messages, answer, item.reference),
        {"temperature": 0, "max_tokens": 160},
        request_id,
        response_format,
    )
    try:
        return json.loads(judged.text)
    except ValueError:  # cut short by max_tokens: the grammar held, the verdict did not finish
        return {"error": "the judge's verdict was cut short", "raw": judged.text}
