"""Batch jobs' lines on a Ray cluster (the Ray job executor's batch side).

A batch job is still run by the gateway holding its lease (batch.py): it reads
the input, keeps the counts, meters every line as the key that created the job,
and writes the output files. With the Ray executor its lines that name one of the
platform's base models run in a Ray actor of the job's own (`BatchEngine`), which
asks Ray for the operator's job resources (GPUs included), loads those models on
its node, and answers lines through the same code as the gateway's routes
(`batch_executor.run_line`), with the engine batching the job's concurrent lines.
Lines naming a workspace's fine-tuned adapter run on the gateway's engines, where
the adapter is served.

When the actor's node dies, its lines in flight fail over to a new actor that Ray
places on another node (each line is answered once: a line's result is kept only
when it came back). The actor belongs to the gateway's Ray driver, so it ends
with the job, or with the gateway; a job taken over by another gateway starts
over there, as without Ray.

Ray is imported only when this executor is built: the platform runs without it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import torch

from ..engine import EngineConfig
from ..errors import APIError, TramontaneError, Unavailable, UpstreamFailed, as_api_error
from ..inference import ModelRegistry, ModelSpec
from ..inference.metrics import Metrics
from ..inference.protocol import ChatCompletionResponse, EmbeddingResponse
from .batch import BatchRequest
from .ray_runner import MAX_RELAUNCHES, RunResources

log = logging.getLogger(__name__)

# Lines one job's actor runs at once: the batch runner's own bound (batch.CONCURRENT_REQUESTS) fits in it.
ACTOR_CONCURRENCY = 16
# How long a job's lines wait for a node that fits them (one left, or none has
# joined yet) before they fail: a restarted node or a new one is minutes away.
NODE_WAIT_S = 900.0
NODE_POLL_S = 1.0


class BatchEngine:
    """The Ray actor that answers one batch job's lines on its node. A plain class
    (wrapped with `ray.remote`); async, so that the job's lines in flight share
    the engine's batches. `models`: name -> (checkpoint path, "chat" or
    "embedding"), loaded on first use."""

    def __init__(self, models: dict[str, tuple[str, str]], gpus: float, threads: int):
        self._models = models
        self._registry = ModelRegistry()
        self._metrics = Metrics(self._registry)
        self._config = EngineConfig(device="cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
        self._loading: asyncio.Lock | None = None
        torch.set_num_threads(max(1, threads))

    async def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    async def run(self, workspace_id: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """{"response": body} or {"error": {status, message, code, param, retry_after_s}}."""
        from .batch_executor import run_line

        try:
            await self._load(body.get("model"))
            response = await run_line(self._registry, self._metrics, workspace_id, endpoint, body)
        except (APIError, TramontaneError) as exc:
            error = as_api_error(exc)
            return {
                "error": {
                    "status": error.status,
                    "message": error.message,
                    "code": error.code,
                    "param": error.param,
                    "retry_after_s": error.retry_after_s,
                }
            }
        return {"response": response.model_dump(mode="json")}

    async def _load(self, name: str | None) -> None:
        if name is None or name not in self._models or name in self._registry.names():
            return
        self._loading = self._loading or asyncio.Lock()
        async with self._loading:
            if name in self._registry.names():
                return
            path, kind = self._models[name]
            spec = ModelSpec(path, name, kind)
            await asyncio.to_thread(self._registry.load, spec, None, self._config)
            await self._registry.start()  # starts the engines not yet running


class RayBatch:
    """The gateway's side: an actor per batch job, on the Ray connection of this
    process, for the lines that name one of `models` (name -> (path, kind))."""

    def __init__(self, models: dict[str, tuple[str, str]], resources: RunResources):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("connect to the Ray cluster (ray.init) before building the Ray job executor")
        self._ray = ray
        self._actor_class = ray.remote(BatchEngine)
        self.models = models
        self.resources = resources

    def lines(self, job_id: str) -> RayLines:
        return RayLines(self, job_id)


class RayLines:
    """One batch job's lines on its actor, started on its first line."""

    def __init__(self, batch: RayBatch, job_id: str):
        self._batch = batch
        self._ray = batch._ray
        self.job_id = job_id
        self._actor: Any | None = None
        self._starting = asyncio.Lock()
        self._lost = 0  # actors of this job that died under their lines
        self.nodes: list[str] = []  # where its actors ran, in order

    def serves(self, model: Any) -> bool:
        return isinstance(model, str) and model in self._batch.models

    async def run(self, workspace_id: str, request: BatchRequest) -> ChatCompletionResponse | EmbeddingResponse:
        while True:
            actor = await self._started()
            try:
                out = await actor.run.remote(workspace_id, request.endpoint, request.body)
            except self._ray.exceptions.RayError as exc:
                await self._replace(actor, exc)
                continue
            if "error" in out:
                error = out["error"]
                raise APIError(
                    error["status"],
                    error["message"],
                    code=error["code"],
                    param=error["param"],
                    retry_after_s=error["retry_after_s"],
                )
            kind = ChatCompletionResponse if request.endpoint == "/v1/chat/completions" else EmbeddingResponse
            return kind.model_validate(out["response"])

    async def _started(self) -> Any:
        async with self._starting:
            if self._lost > MAX_RELAUNCHES:
                raise UpstreamFailed(f"the batch's Ray actor died {self._lost} times; its other lines are not run")
            if self._actor is None:
                resources = self._batch.resources
                await self._node_that_fits(resources)
                actor = self._batch._actor_class.options(
                    max_restarts=0, max_concurrency=ACTOR_CONCURRENCY, **resources.actor_options()
                ).remote(self._batch.models, gpus=resources.gpus, threads=int(max(1.0, resources.cpu)))
                try:
                    self.nodes.append(await actor.node.remote())
                except self._ray.exceptions.RayError as exc:
                    self._ray.kill(actor, no_restart=True)
                    raise UpstreamFailed(f"the batch's Ray actor did not start: {exc}") from None
                self._actor = actor
            return self._actor

    async def _node_that_fits(self, resources: RunResources) -> None:
        """Waits, up to NODE_WAIT_S, for a live node that could run the actor: the
        job's lines are held, not failed, while their only fitting node is away."""
        deadline = asyncio.get_running_loop().time() + NODE_WAIT_S
        told = False
        while not any(resources.fits(node["Resources"]) for node in self._ray.nodes() if node["Alive"]):
            if asyncio.get_running_loop().time() >= deadline:
                raise Unavailable(
                    f"no Ray node has had {resources.describe()} for this batch's lines in {NODE_WAIT_S:g} s",
                    code="no_ray_node",
                )
            if not told:
                log.warning("batch job %s: waiting for a Ray node with %s", self.job_id, resources.describe())
                told = True
            await asyncio.sleep(NODE_POLL_S)

    async def _replace(self, actor: Any, exc: Exception) -> None:
        """Its node died under the line: the next line (this one, again) starts another."""
        async with self._starting:
            if self._actor is not actor:  # another line of the job already replaced it
                return
            self._lost += 1
            log.warning("batch job %s: its Ray actor died (%s)", self.job_id, str(exc).splitlines()[0])
            self._actor = None

    async def aclose(self) -> None:
        if self._actor is not None:
            try:
                self._ray.kill(self._actor, no_restart=True)
            except Exception:  # already gone with its node
                pass
            self._actor = None
