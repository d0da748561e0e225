"""How a job calls its targets, judges and embedding models: through the same
code as /v1/chat/completions, /v1/embeddings and /v1/conversations, without an
HTTP request, as the key that created the job. Each call is admitted by that
key's limits (a refusal waits and tries again), runs at batch priority (it
yields the engine to interactive traffic) and is metered: a usage row with its
tokens, latency and measured energy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread
import numpy as np
from pydantic import ValidationError

from ..agents.runner import Speaker
from ..agents.schemas import CompletionArgs as AgentArgs
from ..agents.schemas import ConversationStart, RunFields
from ..agents.service import AgentsService
from ..engine import Priority, Tenant
from ..finetune.batch import BatchRequest
from ..finetune.ray_batch import RayLines
from ..errors import APIError, Invalid, Limited, TramontaneError, Unavailable, UpstreamFailed
from ..inference import chat, embeddings
from ..inference.generation import Share, current_share
from ..inference.metrics import Metrics
from ..inference.protocol import ChatCompletionRequest, EmbeddingRequest
from ..inference.registry import ModelRegistry
from ..tenancy import Principal, Tenancy
from .schemas import Target

# A call refused for a while (limits, a busy engine) is tried again for up to this long.
RETRY_FOR_S = 600.0
_RETRIED = ("engine_overloaded",)

T = TypeVar("T")


@dataclass
class Answer:
    """A target's answer to one item, and what it cost."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    energy_wh: float | None = None
    # An agent's tool executions: {"name", "arguments", "info"}.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Caller:
    """The calls of one job, as its key, in its workspace."""

    models: ModelRegistry
    metrics: Metrics
    tenancy: Tenancy
    agents: AgentsService | None
    principal: Principal
    request_prefix: str
    # With the Ray job executor: the job's calls to base models run on its Ray actor.
    remote: RayLines | None = None

    @property
    def workspace_id(self) -> str:
        return self.principal.workspace_id

    # -- checks before a job starts

    def check_target(self, target: Target) -> None:
        """Raises NotFound for a model or agent the workspace cannot use."""
        if target.model is not None:
            self.models.chat(target.model, self.workspace_id)
        else:
            if self.agents is None:
                raise Unavailable("agents are not served here", code="agents_disabled")
            assert target.agent_id is not None
            self.agents.agents.get(self.principal, target.agent_id, target.agent_version)

    def check_chat_model(self, name: str, param: str) -> None:
        try:
            self.models.chat(name, self.workspace_id)
        except TramontaneError as exc:
            raise type(exc)(f"{exc.message} (the {param} must be a served chat model)", code=exc.code,
                            param=param) from None

    def check_embedding_model(self, name: str, param: str) -> None:
        try:
            self.models.embedding(name)
        except TramontaneError as exc:
            raise type(exc)(f"{exc.message} (the {param} must be a served embedding model)", code=exc.code,
                            param=param) from None

    # -- calls

    async def _admitted(self, call: Callable[[], Awaitable[T]]) -> tuple[T, Principal]:
        """Runs `call` once admitted by the key's limits, at batch priority; tries
        again while the limits or the engine ask to wait. The returned principal
        carries the ticket that meters the call: record its usage, then `finish` it."""
        deadline = time.monotonic() + RETRY_FOR_S
        share = Share(
            Tenant(self.workspace_id, self.principal.key_id, self.tenancy.admission.weight(self.workspace_id)),
            Priority.BATCH,
        )
        while True:
            try:
                admitted = await anyio.to_thread.run_sync(self.tenancy.admit, self.principal)
            except Limited as exc:
                pause = exc.retry_after_s or 1.0
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                continue
            token = current_share.set(share)
            try:
                return await call(), admitted
            except (APIError, TramontaneError) as exc:
                await anyio.to_thread.run_sync(self.tenancy.finish, admitted)
                pause = exc.retry_after_s or 1.0
                if exc.code not in _RETRIED or time.monotonic() + pause > deadline:
                    raise
            except BaseException:
                await anyio.to_thread.run_sync(self.tenancy.finish, admitted)
                raise
            finally:
                current_share.reset(token)
            await asyncio.sleep(pause)

    async def _meter(self, admitted: Principal, model: str, prompt: int, completion: int, request_id: str) -> float:
        """Records the call's usage; returns its energy in Wh."""

        def record() -> float:
            try:
                usage = self.tenancy.record_usage(
                    admitted, model=model, prompt_tokens=prompt, completion_tokens=completion, request_id=request_id
                )
                return usage.energy_wh
            finally:
                self.tenancy.finish(admitted)

        return await anyio.to_thread.run_sync(record)

    async def chat(
        self, model: str, messages: list[dict[str, Any]], args: dict[str, Any], request_id: str,
        response_format: dict[str, Any] | None = None,
    ) -> Answer:
        body: dict[str, Any] = {"model": model, "messages": messages, **args}
        if response_format is not None:
            body["response_format"] = response_format
        try:
            request = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            raise Invalid(str(exc.errors()[0]["msg"])) from None
        started = time.perf_counter()
        if self.remote is not None and self.remote.serves(model):
            remote, line = self.remote, BatchRequest("/v1/chat/completions", body, request_id)
            response, admitted = await self._admitted(lambda: remote.run(self.workspace_id, line))
        else:
            response, admitted = await self._admitted(
                lambda: chat.complete(self.models, self.metrics, request, self.workspace_id)
            )
        latency = time.perf_counter() - started
        usage = response.usage
        energy = await self._meter(
            admitted, response.model, usage.prompt_tokens, usage.total_tokens - usage.prompt_tokens, request_id
        )
        text = response.choices[0].message.content or ""
        return Answer(text, response.model, usage.prompt_tokens, usage.total_tokens - usage.prompt_tokens, latency,
                      energy)

    async def embed(self, model: str, texts: list[str], request_id: str) -> np.ndarray:
        request = EmbeddingRequest.model_validate({"model": model, "input": texts})
        if self.remote is not None and self.remote.serves(model):
            remote, line = self.remote, BatchRequest("/v1/embeddings", {"model": model, "input": texts}, request_id)
            response, admitted = await self._admitted(lambda: remote.run(self.workspace_id, line))
        else:
            response, admitted = await self._admitted(lambda: embeddings.embed(self.models, request))
        await self._meter(admitted, response.model, response.usage.prompt_tokens, 0, request_id)
        return np.asarray([d.embedding for d in response.data], dtype=np.float64)

    async def agent(
        self,
        target: Target,
        messages: list[dict[str, Any]],
        args: dict[str, Any],
        request_id: str,
        adapt: Callable[[Speaker], Speaker] | None = None,
    ) -> Answer:
        """One conversation with the agent, not stored, its tools run for real (the
        code interpreter in a sandbox released afterwards). `adapt` changes the
        speaker for this conversation only (a red team's planted library)."""
        assert self.agents is not None and target.agent_id is not None
        if any(m["role"] == "system" for m in messages):
            raise Invalid("an agent brings its own instructions: its items take no system message")
        inputs = [{"type": "message.input", "role": m["role"], "content": m["content"]} for m in messages]
        start = ConversationStart.model_validate(
            {"agent_id": target.agent_id, "agent_version": target.agent_version, "inputs": inputs, "store": False}
        )
        conversations = self.agents.conversations
        row, speaker, entries = await anyio.to_thread.run_sync(conversations.start, self.principal, start)
        if adapt is not None:
            speaker = adapt(speaker)
        fields = RunFields(store=False, completion_args=AgentArgs(
            temperature=args.get("temperature"), max_tokens=args.get("max_tokens"), top_p=args.get("top_p"),
            random_seed=args.get("seed"),
        ))
        started = time.perf_counter()
        errors: list[str] = []

        async def run_to_end() -> Any:
            run, events = await conversations.run(self.principal, row, speaker, entries, fields)
            async for event in events:
                if event.get("type") == "conversation.response.error":
                    errors.append(str(event.get("message")))
            return run

        try:
            run, admitted = await self._admitted(run_to_end)
        finally:
            await conversations.sandboxes.release(row.id, self.workspace_id)
        latency = time.perf_counter() - started
        usage = run.usage
        energy = await self._meter(admitted, speaker.model, usage.prompt_tokens, usage.completion_tokens, request_id)
        if errors:
            raise UpstreamFailed(f"the agent's run failed: {errors[0]}")
        texts, tools = [], []
        for entry in run.outputs:
            if entry["type"] == "message.output":
                content = entry["content"]
                texts.append(content if isinstance(content, str) else "".join(
                    c.get("text", "") for c in content if c.get("type") == "text"))
            elif entry["type"] == "tool.execution":
                tools.append({"name": entry["name"], "arguments": entry["arguments"], "info": entry["info"]})
        return Answer("\n".join(texts), speaker.model, usage.prompt_tokens, usage.completion_tokens, latency, energy,
                      tools)

    async def answer(self, target: Target, messages: list[dict[str, Any]], args: dict[str, Any], request_id: str,
                     adapt: Callable[[Speaker], Speaker] | None = None) -> Answer:
        if target.model is not None:
            return await self.chat(target.model, messages, args, request_id)
        return await self.agent(target, messages, args, request_id, adapt)
