"""`FineTuning`: the one object a server holds for files, fine-tuning and batch jobs."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio.to_thread

from ..store import Store
from .batch import BatchJobs
from .files import FileStore
from .jobs import FineTuningJobs, ReadyModel
from .ray_batch import RayBatch
from .ray_runner import RayTraining
from .worker import TrainingWorker

log = logging.getLogger(__name__)

# How often a gateway looks for models that other gateways' jobs finished.
FOLLOW_S = 5.0

MAX_FILE_BYTES = 8 * 1024 * 1024

# on_model_ready(model_id, base_model, adapter_path, job=..., workspace_id=...), plain or async:
# the shape of ModelRegistry.add_adapter, which a server passes.
ModelReadyHook = Callable[..., Awaitable[object] | object]


class FineTuning:
    def __init__(
        self,
        store: Store,
        home: Path,
        base_models: Mapping[str, str],
        *,
        on_model_ready: ModelReadyHook | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        ray: RayTraining | None = None,
    ):
        """`base_models` maps the names of the chat models a job may fine-tune to
        their checkpoints (GGUF file or HF folder).

        `on_model_ready(model_id, base_model, adapter_path, job=, workspace_id=)`
        runs on the server's event loop (awaited when it is a coroutine function):
        at start for every job that already succeeded, then for each job as it
        succeeds. The adapter is the workspace's: serve it to that workspace only.

        `ray`: the Ray job executor, which trains each job on a node of the
        cluster with the resources it asks for; None: one job at a time, here."""
        self.files = FileStore(store, home, max_file_bytes)
        self.jobs = FineTuningJobs(store, self.files, base_models)
        self.batches = BatchJobs(store, self.files)
        self.ray = ray
        self.worker = TrainingWorker(store, self.jobs, home, self._announce_from_worker, ray)
        self.jobs.on_queued = self.worker.wake
        self._on_model_ready = on_model_ready
        # on_classifier_ready(model_id, embedding_model, head_path, job=, workspace_id=):
        # a classifier job's head to serve; set by the platform, which owns the registry.
        self.on_classifier_ready: ModelReadyHook | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._announced: set[str] = set()  # job ids whose model is served here
        self._following: asyncio.Task[None] | None = None

    def ray_batch(self) -> RayBatch | None:
        """With the Ray executor: batch lines on Ray, for the base models jobs may
        name (chat models, and the embedding models once the platform set them)."""
        if self.ray is None:
            return None
        models = {name: (path, "chat") for name, path in self.jobs.base_models.items()}
        models |= {name: (path, "embedding") for name, path in self.jobs.embedding_models.items()}
        return RayBatch(models, self.ray.defaults)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for model in await anyio.to_thread.run_sync(self.worker.ready_models):
            await self._announce(model)
        self.worker.start()
        await self.batches.start()
        self._following = asyncio.create_task(self._follow_ready_models(), name="fine-tuned models")

    async def stop(self) -> None:
        if self._following is not None:
            self._following.cancel()
        await self.batches.stop()
        await anyio.to_thread.run_sync(self.worker.stop)  # waits for the current training step

    async def _follow_ready_models(self) -> None:
        """Serves the models that jobs run by other gateways sharing the database
        finish (each gateway announces those it trains itself at once)."""
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                ready = await anyio.to_thread.run_sync(self.worker.ready_models, self._announced)
            except Exception:
                log.exception("cannot list the fine-tuned models")
                continue
            for model in ready:
                await self._announce(model)

    async def _announce(self, model: ReadyModel) -> None:
        if model.job_id in self._announced:
            return
        self._announced.add(model.job_id)
        hook = self.on_classifier_ready if model.job_type == "classifier" else self._on_model_ready
        if hook is None:
            return
        try:
            result = hook(
                model.model_id,
                model.base_model,
                str(model.adapter_path),
                job=model.job_id,
                workspace_id=model.workspace_id,
            )
            if inspect.isawaitable(result):
                await result
        except Exception:  # one adapter that cannot be served must not stop the server
            log.exception("cannot serve fine-tuned model %s", model.model_id)

    def _announce_from_worker(self, model: ReadyModel) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._announce(model), self._loop).result()
