"""The training worker: claims jobs, oldest first, and runs them.

With the local executor it trains one job at a time in its own thread. With
the Ray executor (ray_runner.py) it claims as many jobs as the cluster takes,
up to RAY_RUNS, each trained in a Ray actor on a node with the resources the job
asks for and followed by a thread here; a job no node could ever run is not
claimed but waits QUEUED, with the reason in its events.

Between steps (or polls of its Ray run) it checks the job's status in the store
(so a cancellation made through any server process stops it) and refreshes the
job's heartbeat. A server that shuts down puts its running job back in the
queue; one that dies leaves it RUNNING without heartbeat, and a worker takes it
over after STALE_AFTER_S. Either way the job resumes from its newest checkpoint.
With Ray, the claimer also holds a lease on the job (store/leases.py) that
fences its writes, so a claimer cut off while another took over records
nothing more.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Collection
from datetime import timedelta
from pathlib import Path

import torch
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..engine import Checkpoint, load_checkpoint
from ..engine.embedding import EmbeddingModel
from ..store import Store
from ..store.leases import Fenced, Lease, new_holder_id
from ..store.types import utcnow
from .classifier_jobs import run_classifier_job
from .dataset import DatasetError
from .jobs import (
    CANCELLATION_REQUESTED,
    CANCELLED,
    CHECKPOINTS_PER_JOB,
    FAILED,
    MAX_BATCH_SIZE,
    QUEUED,
    RUNNING,
    SUCCESS,
    FineTuningJobs,
    ReadyModel,
    job_dir,
    model_id,
    ready_model,
    transition,
    unix,
)
from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from .models import FineTuningJobRow
from .ray_runner import RayTraining, TrainingTask, Verdict, checkpoint_entry, prune_optimizer_states
from .trainer import StepMetrics, Trainer, TrainingPlan, WeightedExamples

log = logging.getLogger(__name__)

IDLE_POLL_S = 2.0  # also picks up jobs queued by another server process
# A RUNNING job without a step for this long belongs to a server that died: another worker resumes it.
STALE_AFTER_S = 120.0
# Jobs one gateway follows on Ray at once (each a thread polling its actor).
RAY_RUNS = 32
# Jobs looked at per claim: the oldest ones no Ray node can run are passed over.
CLAIM_SCAN = 16


class TrainingWorker:
    def __init__(
        self,
        store: Store,
        jobs: FineTuningJobs,
        home: Path,
        on_model_ready: Callable[[ReadyModel], None],
        ray: RayTraining | None = None,
    ):
        """`ray`: train completion jobs on that Ray cluster; None: here, one at a time."""
        self.store = store
        self.jobs = jobs
        self.home = home
        self.on_model_ready = on_model_ready
        self.ray = ray
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: dict[str, threading.Thread] = {}  # with Ray: the jobs followed here
        self._leases: dict[str, Lease] = {}  # with Ray: the lease of each of them
        self._holder = new_holder_id()
        self._local = threading.Lock()  # one job at a time in this process (the cached models)
        self._base: Checkpoint | None = None  # the last base model loaded, reused by the next job
        self._embedding: tuple[str, EmbeddingModel] | None = None  # the same, for classifier jobs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fine-tuning-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops after the current step; a running job goes back to QUEUED, to resume later."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        for run in list(self._runs.values()):
            run.join()

    def wake(self) -> None:
        self._wake.set()

    def ready_models(self, known: Collection[str] = ()) -> list[ReadyModel]:
        """The adapters of every job that succeeded (but the `known` job ids), to
        serve again after a restart, or as other gateways' jobs finish."""
        with self.store.session() as session:
            done_ids = session.scalars(select(FineTuningJobRow.id).where(FineTuningJobRow.status == SUCCESS)).all()
            new = [job_id for job_id in done_ids if job_id not in known]
            if not new:
                return []
            done = session.scalars(select(FineTuningJobRow).where(FineTuningJobRow.id.in_(new))).all()
            return [ready_model(self.home, job) for job in done]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            for job_id in [job_id for job_id, run in self._runs.items() if not run.is_alive()]:
                del self._runs[job_id]
            job_id = self._claim() if len(self._runs) < RAY_RUNS else None
            if job_id is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            if self.ray is None:
                self._run_guarded(job_id)
                continue
            run = threading.Thread(target=self._run_guarded, args=(job_id,), name=f"fine-tuning {job_id}", daemon=True)
            self._runs[job_id] = run
            run.start()

    def _run_guarded(self, job_id: str) -> None:
        try:
            self._run(job_id)
        except Fenced:
            log.warning("fine-tuning job %s: another gateway runs it now", job_id)
        except Exception as exc:  # the job fails, the worker goes on with the next
            log.exception("fine-tuning job %s failed", job_id)
            try:
                self._finish(job_id, FAILED, error=f"{type(exc).__name__}: {exc}")
            except Fenced:
                log.warning("fine-tuning job %s: another gateway runs it now", job_id)
        finally:
            if (lease := self._leases.pop(job_id, None)) is not None:
                try:
                    lease.release()
                except Exception:
                    log.exception("cannot release the lease of fine-tuning job %s", job_id)

    def _claim(self) -> str | None:
        """The oldest job waiting to run, or whose server died mid-run (no step for
        STALE_AFTER_S), now marked as this worker's by a fresh heartbeat. With Ray,
        jobs that no node could run are passed over, and this worker also takes
        the job's lease (None if another gateway still holds it)."""
        stale = utcnow() - timedelta(seconds=STALE_AFTER_S)
        abandoned = FineTuningJobRow.modified_at < stale
        with self.store.write_session() as session:
            # A cancellation its dead server never acted on.
            # SKIP LOCKED (PostgreSQL): workers of several gateways never claim one job
            # twice, nor wait for each other; SQLite's write lock serialises them anyway.
            orphans = (
                select(FineTuningJobRow)
                .where(FineTuningJobRow.status == CANCELLATION_REQUESTED, abandoned)
                .with_for_update(skip_locked=True)
            )
            for job in session.scalars(orphans):
                transition(job, CANCELLED)
            runnable = or_(FineTuningJobRow.status == QUEUED, and_(FineTuningJobRow.status == RUNNING, abandoned))
            # Not the jobs this worker follows: a run whose heartbeat is late here is still its own.
            followed = FineTuningJobRow.id.not_in(list(self._runs))
            candidates = session.scalars(
                select(FineTuningJobRow)
                .where(runnable, followed)
                .order_by(FineTuningJobRow.created_at)
                .limit(CLAIM_SCAN if self.ray is not None else 1)
                .with_for_update(skip_locked=True)
            )
            job = next((job for job in candidates if self._placeable(job)), None)
            if job is None:
                return None
            if job.status == QUEUED:
                transition(job, RUNNING)
            else:
                job.modified_at = utcnow()
            job_id = job.id
        if self.ray is not None and job.job_type != "classifier":
            lease = Lease(self.store, "", name=f"fine-tuning:{job_id}", holder=self._holder, ttl_s=STALE_AFTER_S)
            if lease.try_acquire() is None:
                log.warning("fine-tuning job %s: another gateway still holds its lease", job_id)
                return None
            self._leases[job_id] = lease
        return job_id

    def _placeable(self, job: FineTuningJobRow) -> bool:
        """Whether a node could run `job` (always, without Ray). One that none can
        waits QUEUED, its reason noted once in its events."""
        if self.ray is None or job.job_type == "classifier":
            return True
        reason = self.ray.unplaceable(self.ray.resources(job.resources))
        if reason is None:
            return True
        if job.status == RUNNING:  # its run's node left; it goes back in the queue
            transition(job, QUEUED, reason=reason)
        elif not job.events or job.events[-1]["data"].get("reason") != reason:
            job.events = [*job.events, {"name": "waiting", "data": {"reason": reason}, "created_at": unix(utcnow())}]
        return False

    def _run(self, job_id: str) -> None:
        with self.store.session() as session:
            job = session.get(FineTuningJobRow, job_id)
            assert job is not None
            session.expunge(job)
        if job.job_type == "classifier":
            with self._local:
                self._run_classifier(job)
            return
        if self.ray is not None:
            self._run_on_ray(job)
            return
        with self._local:
            self._run_here(job)

    def _run_here(self, job: FineTuningJobRow) -> None:
        job_id = job.id
        trainer = self._trainer(job)
        resumed = trainer.resume()
        if resumed:
            self._update(job_id, event={"name": "resumed", "data": {"step_number": resumed}})

        def on_checkpoint(metrics: StepMetrics, path: Path) -> None:
            self._record_checkpoint(job_id, metrics, path)

        finished = trainer.run(on_checkpoint, lambda: self._should_stop(job_id))
        if finished:
            adapter = job_dir(self.home, job) / "adapter"
            self._publish(trainer.checkpoints_dir / f"step-{trainer.step:06d}", adapter)
            job.fine_tuned_model = model_id(job)
            self._finish(job_id, SUCCESS, fine_tuned_model=job.fine_tuned_model, trained_tokens=trainer.trained_tokens)
            self.on_model_ready(ready_model(self.home, job))
        elif self._status(job_id) == CANCELLATION_REQUESTED:
            self._finish(job_id, CANCELLED)
        elif self._stopping.is_set():
            # Back in the queue: the next server to start (or another one sharing the store) resumes it.
            self._finish(job_id, QUEUED, reason="the server stopped", step_number=trainer.step)

    def _run_on_ray(self, job: FineTuningJobRow) -> None:
        assert self.ray is not None
        outcome = self.ray.run(
            job.id, lambda: self._training_task(job), self.ray.resources(job.resources), _RunHooks(self, job.id)
        )
        if outcome is None:
            log.warning("fine-tuning job %s: another gateway took it over", job.id)
        elif outcome.finished:
            adapter = job_dir(self.home, job) / "adapter"
            self._publish(job_dir(self.home, job) / "checkpoints" / f"step-{outcome.step:06d}", adapter)
            job.fine_tuned_model = model_id(job)
            self._finish(job.id, SUCCESS, fine_tuned_model=job.fine_tuned_model, trained_tokens=outcome.trained_tokens)
            self.on_model_ready(ready_model(self.home, job))
        elif outcome.requeue is not None:
            self._finish(job.id, QUEUED, reason=outcome.requeue)
        elif self._status(job.id) == CANCELLATION_REQUESTED:
            self._finish(job.id, CANCELLED)
        elif self._stopping.is_set():
            self._finish(job.id, QUEUED, reason="the server stopped", step_number=outcome.step)

    def _training_task(self, job: FineTuningJobRow) -> TrainingTask:
        plan, train, valid = self._plan_and_data(job)
        path = str(Path(self.jobs.base_models[job.model]).resolve())
        return TrainingTask(job.model, path, plan, train, valid, str(job_dir(self.home, job).resolve()))

    def _run_classifier(self, job: FineTuningJobRow) -> None:
        """A classifier job: short (one embedding pass and a fit of a linear head), so
        it starts over rather than resuming after an interruption."""
        path = self.jobs.embedding_models[job.model]
        if self._embedding is None or self._embedding[0] != job.model:
            self._embedding = (job.model, EmbeddingModel.from_path(path))
        out = job_dir(self.home, job) / "classifier"
        shutil.rmtree(out, ignore_errors=True)

        def on_checkpoint(step: int, loss: float) -> None:
            metrics = {"train_loss": loss, "valid_loss": None, "valid_mean_token_accuracy": None}
            self._update(job.id, checkpoint={"step_number": step, "metrics": metrics})

        tokens = run_classifier_job(
            job, self.jobs.files, self._embedding[1], out, lambda: self._should_stop(job.id), on_checkpoint
        )
        if tokens is not None:
            job.fine_tuned_model = model_id(job)
            self._finish(job.id, SUCCESS, fine_tuned_model=job.fine_tuned_model, trained_tokens=tokens)
            self.on_model_ready(ready_model(self.home, job))
        elif self._status(job.id) == CANCELLATION_REQUESTED:
            self._finish(job.id, CANCELLED)
        elif self._stopping.is_set():
            self._finish(job.id, QUEUED, reason="the server stopped")

    def _trainer(self, job: FineTuningJobRow) -> Trainer:
        plan, train, valid = self._plan_and_data(job)
        path = self.jobs.base_models[job.model]
        if self._base is None or self._base.name != job.model:
            self._base = None  # free the previous model before loading the next
            checkpoint = load_checkpoint(path)
            checkpoint.name = job.model
            self._base = checkpoint
        return Trainer(self._base, plan, train, valid, job_dir(self.home, job), self.device)

    def _plan_and_data(self, job: FineTuningJobRow) -> tuple[TrainingPlan, WeightedExamples, list]:
        params = job.hyperparameters
        seq_len = params["seq_len"]
        try:
            train = WeightedExamples.from_files(
                [
                    (self.jobs.examples(job.workspace_id, job.model, f["file_id"], seq_len), f["weight"])
                    for f in job.training_files
                ]
            )
            valid = [
                e
                for file_id in job.validation_files
                for e in self.jobs.examples(job.workspace_id, job.model, file_id, seq_len)
            ]
        except DatasetError as exc:
            raise RuntimeError(f"the training data changed since validation: {exc}") from None
        steps = params["training_steps"]
        plan = TrainingPlan(
            steps=steps,
            learning_rate=params["learning_rate"],
            weight_decay=params["weight_decay"],
            warmup_fraction=params["warmup_fraction"],
            seq_len=seq_len,
            batch_size=min(MAX_BATCH_SIZE, len(train.examples)),
            checkpoint_every=max(1, -(-steps // CHECKPOINTS_PER_JOB)),
        )
        return plan, train, valid

    def _heartbeat(self, job_id: str) -> Verdict:
        """A Ray run's check: the job's lease and heartbeat renewed, and whether it goes on."""
        lease = self._leases.get(job_id)
        if lease is not None and not lease.renew():
            return Verdict.LOST
        try:
            with self.store.write_session() as session:
                self._fence(session, job_id)
                job = session.get(FineTuningJobRow, job_id)
                if job is None or job.status != RUNNING:
                    return Verdict.STOP
                job.modified_at = utcnow()
        except Fenced:
            return Verdict.LOST
        return Verdict.STOP if self._stopping.is_set() else Verdict.GO

    def _fence(self, session: Session, job_id: str) -> None:
        if (lease := self._leases.get(job_id)) is not None:
            lease.fence(session, lease.token)

    def _should_stop(self, job_id: str) -> bool:
        """Between steps: the job's heartbeat, and whether it was cancelled or the server is stopping."""
        with self.store.write_session() as session:
            job = session.get(FineTuningJobRow, job_id)
            if job is None or job.status != RUNNING:
                return True
            job.modified_at = utcnow()
        return self._stopping.is_set()

    def _status(self, job_id: str) -> str | None:
        with self.store.session() as session:
            return session.scalar(select(FineTuningJobRow.status).where(FineTuningJobRow.id == job_id))

    def _record_checkpoint(self, job_id: str, metrics: StepMetrics, path: Path) -> None:
        self._update(job_id, checkpoint=checkpoint_entry(metrics))
        prune_optimizer_states(path)

    def _update(self, job_id: str, *, event: dict | None = None, checkpoint: dict | None = None) -> None:
        with self.store.write_session() as session:
            self._fence(session, job_id)
            job = session.get(FineTuningJobRow, job_id)
            if job is None:  # its workspace was erased mid-run; the job stops at its next step
                return
            job.modified_at = now = utcnow()
            if event is not None:
                job.events = [*job.events, {**event, "created_at": unix(now)}]
            # Once per step: a run started again after its node died reports the checkpoints it resumes from.
            if checkpoint is not None and all(c["step_number"] != checkpoint["step_number"] for c in job.checkpoints):
                job.checkpoints = [*job.checkpoints, {**checkpoint, "created_at": unix(now)}]

    def _finish(self, job_id: str, status: str, **fields: object) -> None:
        """Moves the job to `status`; `fine_tuned_model` and `trained_tokens` are set
        on the job, anything else goes in the event's data."""
        with self.store.write_session() as session:
            self._fence(session, job_id)
            job = session.get(FineTuningJobRow, job_id)
            if job is None:  # erased with its workspace
                return
            data = {}
            for name, value in fields.items():
                if name in ("fine_tuned_model", "trained_tokens"):
                    setattr(job, name, value)
                else:
                    data[name] = value
            transition(job, status, **data)

    @staticmethod
    def _publish(checkpoint: Path, adapter: Path) -> None:
        """The final adapter, in PEFT's layout, where serving reads it."""
        adapter.mkdir(parents=True, exist_ok=True)
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(checkpoint / name, adapter / name)


class _RunHooks:
    """A Ray run's way to its job's records, through the worker that claimed it."""

    def __init__(self, worker: TrainingWorker, job_id: str):
        self._worker = worker
        self._job_id = job_id

    def check(self) -> Verdict:
        return self._worker._heartbeat(self._job_id)

    def record_checkpoint(self, entry: dict) -> None:
        self._worker._update(self._job_id, checkpoint=entry)

    def event(self, name: str, data: dict) -> None:
        self._worker._update(self._job_id, event={"name": name, "data": data})
