"""`FineTuning`: the one object a server holds for files, fine-tuning and batch jobs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio.to_thread

from ..store import Store
from .batch import BatchJobs
from .files import FileStore
from .jobs import FineTuningJobs, ModelReadyHook
from .worker import TrainingWorker

MAX_FILE_BYTES = 8 * 1024 * 1024


class FineTuning:
    def __init__(
        self,
        store: Store,
        home: Path,
        base_models: Mapping[str, str],
        *,
        on_model_ready: ModelReadyHook | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
    ):
        """`base_models` maps the names of the chat models a job may fine-tune to
        their checkpoints (GGUF file or HF folder). `on_model_ready(model_id,
        base_model, adapter_path)` is called from the training thread when a job
        succeeds, and at start for every job that already had."""
        self.files = FileStore(store, home, max_file_bytes)
        self.jobs = FineTuningJobs(store, self.files, base_models)
        self.batches = BatchJobs(store, self.files)
        self.worker = TrainingWorker(store, self.jobs, home, on_model_ready)
        self.jobs.on_queued = self.worker.wake

    async def start(self) -> None:
        self.worker.start()
        await self.batches.run_pending()

    async def stop(self) -> None:
        await self.batches.stop()
        await anyio.to_thread.run_sync(self.worker.stop)  # waits for the current training step
