"""How the conversation loop calls a model: a chat request in, text out.

`EngineBackend` goes through the inference layer's chat path (`prepare`: prompt
rendering, tools in the prompt, sampling settings, grammar), so an agent's
model sees exactly what a /v1/chat/completions client would send it. The loop
parses the calls out of the text itself, with the parser of the format the
model writes them in (`<tool_call>` blocks, or Mistral's `[TOOL_CALLS]`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ..inference.chat import ChatOutput, ToolCallParser, prepare, tool_call_parser
from ..inference.generation import Generation
from ..inference.metrics import Metrics
from ..inference.protocol import ChatCompletionRequest
from ..inference.registry import ModelRegistry


class ModelTurn(Protocol):
    """One model call. Its token counts are what a `RequestMeter` meters."""

    @property
    def started(self) -> bool: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def num_cached_tokens(self) -> int: ...

    async def start(self) -> None:
        """Raises a TramontaneError if the model refuses the request."""

    def text(self) -> AsyncIterator[str]:
        """The generated text, in pieces as they come."""
        ...

    async def close(self) -> None: ...

    def tool_call_parser(self) -> ToolCallParser:
        """A parser of the calls in the text, in the format this model writes them."""
        ...


class ChatBackend(Protocol):
    def check(self, model: str) -> None:
        """Raises NotFound or Invalid if `model` cannot chat."""

    def turn(self, request: ChatCompletionRequest, workspace_id: str) -> ModelTurn:
        """The model's turn for `workspace_id`'s conversation: the Files API ids its
        images name are read from that workspace's files only."""
        ...


class EngineTurn:
    def __init__(self, generation: Generation, output: ChatOutput):
        self._gen = generation
        self._output = output

    @property
    def started(self) -> bool:
        return self._gen.started

    @property
    def prompt_tokens(self) -> int:
        return self._gen.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._gen.completion_tokens

    @property
    def num_cached_tokens(self) -> int:
        return self._gen.num_cached_tokens

    async def start(self) -> None:
        await self._gen.start()

    async def text(self) -> AsyncIterator[str]:
        async for out in self._gen.outputs():
            yield out.outputs[0].delta_text

    async def close(self) -> None:
        await self._gen.close()

    def tool_call_parser(self) -> ToolCallParser:
        return tool_call_parser(self._output.tokenizer)


class EngineBackend:
    """The models of the platform's registry."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics):
        self._registry = registry
        self._metrics = metrics

    def check(self, model: str) -> None:
        self._registry.chat(model)

    def turn(self, request: ChatCompletionRequest, workspace_id: str) -> ModelTurn:
        generation, output = prepare(self._registry, self._metrics, request, workspace_id)
        return EngineTurn(generation, output)
