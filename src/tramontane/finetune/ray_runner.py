"""The Ray job executor: a claimed fine-tuning job trains in a Ray actor, on a
node that has the resources the job asks for.

Only the training moves. The gateway that claimed the job (worker.py) keeps
owning it: it holds the job's lease, records its progress, events and
checkpoints in the shared store, publishes the adapter and serves it. The actor
(`TrainingRun`) asks Ray for the job's CPUs, GPUs and memory, so Ray starts it
on a node with them free; it loads the base model there and trains in a thread
of its own, while the claimer polls it.

Checkpoints are written by the actor into the job's folder of the shared home
(the same volume the gateways share for files), not into Ray's object store:
they must outlive both the node that wrote them and the gateway that claimed
the job (Ray frees an object with its owner, and loses a node's copies with the
node), and the finished adapter has to land in the home anyway, where serving
reads it. Each checkpoint carries its metrics (trainer.METRICS_FILE), so a
run started elsewhere reports the checkpoints it resumes from.

At most one actor per job exists in the cluster: it is named after the job, in
one namespace. When its node dies, the claimer starts another, which Ray places
on another node and which resumes from the newest checkpoint. When the claimer
dies, Ray kills the actors its process owned, and the gateway that takes the
job over starts a new one; when the claimer is only cut off (paused, or away
from the database) its actor lives on, and the gateway that takes over adopts
it by name instead of starting a second one. The claimer that was cut off then
finds its lease gone and lets the actor be.

Ray is imported only when this executor is built: the platform runs without it.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..engine import load_checkpoint
from .dataset import Example
from .trainer import METRICS_FILE, STATE_FILE, StepMetrics, Trainer, TrainingPlan, WeightedExamples

log = logging.getLogger(__name__)

NAMESPACE = "tramontane"
POLL_S = 0.5  # how often the claimer reads a run's progress
CHECK_S = 2.0  # how often it renews the job's lease and heartbeat, and reads its status
# A run whose actor died this often (its node lost each time) fails: something
# other than a lost node kills it.
MAX_RELAUNCHES = 3
# A run not started after this long is noted in the job's events: Ray is waiting
# for a node with room (starting the actor's process takes a few seconds anyway).
PLACEMENT_NOTE_S = 10.0
_CALL_TIMEOUT_S = 30.0
_NAME_RELEASE_S = 30.0  # a node that does not answer a progress call for this long is treated as gone


def actor_name(job_id: str) -> str:
    return f"fine-tuning:{job_id}"


@dataclass(frozen=True)
class RunResources:
    """What one job's run asks Ray for."""

    cpu: float = 1.0
    gpus: float = 0.0
    memory_mb: int | None = None

    def with_asked(self, asked: dict[str, Any] | None) -> RunResources:
        """These defaults, overridden by what the job asked for (its `resources`)."""
        asked = asked or {}
        return RunResources(
            cpu=float(asked.get("cpu", self.cpu)),
            gpus=float(asked.get("gpus", self.gpus)),
            memory_mb=asked.get("memory_mb", self.memory_mb),
        )

    def actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpu, "num_gpus": self.gpus}
        if self.memory_mb:
            options["memory"] = self.memory_mb * 2**20
        return options

    def fits(self, totals: dict[str, float]) -> bool:
        """Whether a node with these total resources could ever run it."""
        return (
            totals.get("CPU", 0.0) >= self.cpu
            and totals.get("GPU", 0.0) >= self.gpus
            and totals.get("memory", 0.0) >= (self.memory_mb or 0) * 2**20
        )

    def describe(self) -> str:
        parts = [f"{self.cpu:g} CPU"]
        if self.gpus:
            parts.append(f"{self.gpus:g} GPU")
        if self.memory_mb:
            parts.append(f"{self.memory_mb} MB of memory")
        return ", ".join(parts)


@dataclass(frozen=True)
class TrainingTask:
    """All a node needs to train a job: sent with the actor, so the node reads
    neither the database nor the uploaded files; only the base model's
    checkpoint and the job's folder, at the same paths as on the gateway."""

    base_model: str
    base_path: str
    plan: TrainingPlan
    train: WeightedExamples
    valid: list[Example]
    workdir: str


def checkpoint_entry(metrics: StepMetrics) -> dict[str, Any]:
    """A checkpoint as the job's `checkpoints` list shows it (without its time)."""
    return {
        "step_number": metrics.step,
        "metrics": {
            "train_loss": metrics.train_loss,
            "valid_loss": metrics.valid_loss,
            "valid_mean_token_accuracy": metrics.valid_mean_token_accuracy,
        },
    }


def prune_optimizer_states(newest: Path) -> None:
    """Only the newest checkpoint needs its optimizer state (to resume); older ones keep their adapter."""
    for older in newest.parent.glob("step-*/" + STATE_FILE):
        if older.parent != newest:
            older.unlink(missing_ok=True)


def checkpoints_on_disk(checkpoints_dir: Path) -> list[dict[str, Any]]:
    """The complete checkpoints under `checkpoints_dir`, oldest first."""
    found = []
    for metrics_file in sorted(checkpoints_dir.glob("step-*/" + METRICS_FILE)):
        if metrics_file.parent.name.endswith(".partial"):
            continue
        found.append(checkpoint_entry(StepMetrics(**json.loads(metrics_file.read_text()))))
    return found


class TrainingRun:
    """The Ray actor that trains one job on the node Ray placed it on. A plain
    class (the executor wraps it with `ray.remote`), so this module imports
    without Ray. Its calls are short: `start` begins training in a thread (once,
    however often it is called, so that a gateway adopting the actor does not
    start a second run), `progress` reports, `stop` asks the training to stop
    after its current step."""

    def __init__(self, task: TrainingTask, threads: int, gpus: float):
        self._task = task
        self._device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(max(1, threads))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._resumed: int | None = None  # the step it resumed from, once loaded
        self._checkpoints: list[dict[str, Any]] = []
        self._result: dict[str, Any] | None = None
        self._error: str | None = None

    def start(self) -> dict[str, str]:
        """Starts training unless it already has; returns where it runs."""
        import ray

        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._train, name="fine-tuning run", daemon=True)
                self._thread.start()
        return {"node": ray.get_runtime_context().get_node_id(), "device": str(self._device)}

    def progress(self) -> dict[str, Any]:
        with self._lock:
            return {
                "resumed": self._resumed,
                "checkpoints": list(self._checkpoints),
                "result": self._result,
                "error": self._error,
            }

    def stop(self) -> None:
        self._stop.set()

    def _train(self) -> None:
        try:
            task = self._task
            base = load_checkpoint(task.base_path)
            base.name = task.base_model
            trainer = Trainer(base, task.plan, task.train, task.valid, Path(task.workdir), self._device)
            resumed = trainer.resume()
            with self._lock:
                self._resumed = resumed
                # What earlier runs (on nodes since lost) checkpointed, for the claimer to record.
                self._checkpoints = checkpoints_on_disk(trainer.checkpoints_dir)
            finished = trainer.run(self._on_checkpoint, self._stop.is_set)
            result = {"finished": finished, "step": trainer.step, "trained_tokens": trainer.trained_tokens}
            with self._lock:
                self._result = result
        except Exception as exc:  # reported to the claimer, which fails the job
            log.exception("fine-tuning run failed")
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc}"

    def _on_checkpoint(self, metrics: StepMetrics, path: Path) -> None:
        prune_optimizer_states(path)
        with self._lock:
            self._checkpoints.append(checkpoint_entry(metrics))


class Verdict(enum.Enum):
    GO = "go"
    STOP = "stop"  # cancelled, or this gateway is stopping: stop the run
    LOST = "lost"  # another gateway took the job: leave its run alone


class RunHooks(Protocol):
    """How a run reaches its job's records, in the claiming gateway."""

    def check(self) -> Verdict:
        """Renews the job's lease and heartbeat; whether the run goes on."""

    def record_checkpoint(self, entry: dict[str, Any]) -> None: ...

    def event(self, name: str, data: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """How a run ended: trained to its last step, stopped, or handed back to the
    queue (`requeue`: why) because no node can run it any more."""

    finished: bool
    step: int = 0
    trained_tokens: int = 0
    requeue: str | None = None


class _ActorGone(Exception):
    """The run's actor died (its node lost) or stopped answering."""


class RayTraining:
    """The claimer's side of the Ray executor, on the Ray connection of this
    process (`ray.init` first: the composition root connects once, for the
    deployments' backend and this)."""

    def __init__(self, defaults: RunResources = RunResources()):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("connect to the Ray cluster (ray.init) before building the Ray job executor")
        self._ray = ray
        self._actor_class = ray.remote(TrainingRun)
        self.defaults = defaults

    def resources(self, asked: dict[str, Any] | None) -> RunResources:
        return self.defaults.with_asked(asked)

    def unplaceable(self, resources: RunResources) -> str | None:
        """Why no live node of the cluster could run a job asking for
        `resources`, even idle; None when one could."""
        nodes = [node["Resources"] for node in self._ray.nodes() if node["Alive"]]
        if any(resources.fits(totals) for totals in nodes):
            return None
        return f"no Ray node has {resources.describe()}; the job waits for one to join the cluster"

    def run(
        self, job_id: str, task: Callable[[], TrainingTask], resources: RunResources, hooks: RunHooks
    ) -> Outcome | None:
        """Runs the job's training on the cluster until it ends; None when another
        gateway took the job over (its run then is that gateway's)."""
        actor = self._find(job_id)
        adopted = actor is not None
        relaunches = 0
        while True:
            if actor is None:
                actor = self._launch(job_id, task(), resources)
            try:
                outcome = self._follow(actor, resources, hooks, adopted)
            except _ActorGone as gone:
                self._kill(actor)
                relaunches += 1
                if relaunches > MAX_RELAUNCHES:
                    raise RuntimeError(f"the job's Ray actor died {relaunches} times; last: {gone}") from None
                hooks.event("node-lost", {"reason": str(gone), "restart": relaunches})
                actor, adopted = None, False
                continue
            except BaseException:
                self._kill(actor)
                raise
            if outcome is not None:
                self._kill(actor)
            return outcome

    def _find(self, job_id: str) -> Any | None:
        """The job's actor, left running by a gateway that lost the job."""
        try:
            return self._ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
        except ValueError:
            return None

    def _launch(self, job_id: str, task: TrainingTask, resources: RunResources) -> Any:
        options = self._actor_class.options(
            name=actor_name(job_id),
            namespace=NAMESPACE,
            # The claimer, not Ray, starts another when this one dies: it records why.
            max_restarts=0,
            max_concurrency=2,  # `stop` and `progress` answer while `start` returns
            **resources.actor_options(),
        )
        # The name of an actor just killed (its node lost) is released a moment later.
        deadline = time.monotonic() + _NAME_RELEASE_S
        while True:
            try:
                return options.remote(task, threads=int(max(1.0, resources.cpu)), gpus=resources.gpus)
            except self._ray.exceptions.ActorAlreadyExistsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL_S)

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass

    def _follow(self, actor: Any, resources: RunResources, hooks: RunHooks, adopted: bool) -> Outcome | None:
        placement = self._placed(actor, resources, hooks)
        if isinstance(placement, Outcome) or placement is None:
            return placement
        hooks.event("adopted" if adopted else "placed", placement)
        announced_resume = adopted  # the gateway it was adopted from announced it
        recorded_steps: set[int] = set()
        next_check = time.monotonic() + CHECK_S
        stopping = False
        while True:
            progress = self._call(actor.progress)
            if progress["resumed"] and not announced_resume:
                hooks.event("resumed", {"step_number": progress["resumed"], "node": placement["node"]})
            if progress["resumed"] is not None:
                announced_resume = True
            for entry in progress["checkpoints"]:
                if entry["step_number"] not in recorded_steps:
                    hooks.record_checkpoint(entry)
                    recorded_steps.add(entry["step_number"])
            if progress["error"] is not None:
                raise RuntimeError(progress["error"])
            if progress["result"] is not None:
                result = progress["result"]
                return Outcome(result["finished"], result["step"], result["trained_tokens"])
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + CHECK_S
                verdict = hooks.check()
                if verdict is Verdict.LOST:
                    return None
                if verdict is Verdict.STOP and not stopping:
                    stopping = True
                    self._call(actor.stop)  # the run stops after its step, and reports
            time.sleep(POLL_S)

    def _placed(self, actor: Any, resources: RunResources, hooks: RunHooks) -> dict[str, str] | Outcome | None:
        """Waits for Ray to place the actor (it waits for a node with room):
        where it runs, or how the wait ended (cancelled, lost, or no node left
        that could ever run it)."""
        started = actor.start.remote()
        began = time.monotonic()
        next_check = began + CHECK_S
        noted = False
        while True:
            ready, _ = self._ray.wait([started], timeout=POLL_S)
            if ready:
                try:
                    return self._ray.get(started)
                except self._ray.exceptions.RayError as exc:
                    raise _ActorGone(str(exc).splitlines()[0]) from None
            now = time.monotonic()
            if not noted and now - began > PLACEMENT_NOTE_S:
                noted = True
                reason = f"not started after {PLACEMENT_NOTE_S:g} s: waiting for a Ray node with {resources.describe()} free"
                hooks.event("waiting", {"reason": reason})
            if now >= next_check:
                next_check = now + CHECK_S
                verdict = hooks.check()
                if verdict is Verdict.LOST:
                    return None
                if verdict is Verdict.STOP:
                    return Outcome(False)
                if (reason := self.unplaceable(resources)) is not None:
                    return Outcome(False, requeue=reason)

    def _call(self, method: Any) -> Any:
        try:
            return self._ray.get(method.remote(), timeout=_CALL_TIMEOUT_S)
        except self._ray.exceptions.GetTimeoutError:
            raise _ActorGone(f"no answer from the run's node in {_CALL_TIMEOUT_S:g} s") from None
        except self._ray.exceptions.RayError as exc:
            raise _ActorGone(str(exc).splitlines()[0]) from None
