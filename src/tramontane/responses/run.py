"""One response: its request as a chat request on a served model, the engine
generation, and the response object it fills in as text comes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from ..errors import Invalid
from ..inference.chat import prepare, tool_call_parser
from ..errors import as_api_error
from ..inference.generation import Generation
from ..inference.metrics import Metrics
from ..inference.protocol import ChatCompletionRequest
from ..inference.registry import ModelRegistry
from ..inference.tool_calls import ContentDelta
from .events import OutputBuilder
from .items import chat_messages, new_item_id
from .schemas import (
    IncompleteDetails,
    InputTokensDetails,
    NamedFunctionChoice,
    ResponseCreate,
    ResponseError,
    ResponseObject,
    ResponseUsage,
)


def _tools(body: ResponseCreate) -> list[dict[str, Any]]:
    tools = []
    for index, tool in enumerate(body.tools or []):
        if tool.type != "function" or not tool.name:
            message = f"tools of type '{tool.type}' are not supported; only named functions"
            raise Invalid(message, param=f"tools[{index}]")
        function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
        tools.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    return tools


def _response_format(body: ResponseCreate) -> dict[str, Any] | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise Invalid("text.format of type json_schema needs a schema", param="text.format.schema")
    schema = {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": schema}


def chat_request(
    body: ResponseCreate, context: list[dict[str, Any]], items: list[dict[str, Any]]
) -> ChatCompletionRequest:
    """The chat request a served model answers for `body`, after the items of its chain."""
    choice: Any = body.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        choice = {"type": "function", "function": {"name": choice.name}}
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": chat_messages(body.instructions, context + items),
        "tools": _tools(body) or None,
        "tool_choice": choice,
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": _response_format(body),
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
    }
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Invalid(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", param="input") from None


def initial_object(body: ResponseCreate, response_id: str) -> ResponseObject:
    fmt = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format else None
    choice = body.tool_choice
    return ResponseObject(
        id=response_id,
        created_at=int(time.time()),
        status="queued" if body.background else "in_progress",
        model=body.model,
        instructions=body.instructions,
        previous_response_id=body.previous_response_id,
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or []],
        tool_choice=choice.model_dump() if isinstance(choice, NamedFunctionChoice) else choice or "auto",
        parallel_tool_calls=body.parallel_tool_calls is not False,
        text={"format": fmt or {"type": "text"}},
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        store=body.store,
        background=body.background,
        metadata=body.metadata or {},
        user=body.user,
    )


class ResponseRun:
    """A response being generated: `events()` streams it, `complete()` waits for it;
    either way `response` ends up whole (or cut short, with its status saying why)."""

    def __init__(
        self,
        models: ModelRegistry,
        metrics: Metrics,
        body: ResponseCreate,
        workspace_id: str,
        context: list[dict[str, Any]],
        items: list[dict[str, Any]],
    ):
        request = chat_request(body, context, items)
        self.gen, output = prepare(models, metrics, request, workspace_id)
        self.response = initial_object(body, new_item_id("resp"))
        self.response.model = self.gen.model
        self.input_items = items
        self._parser = tool_call_parser(output.tokenizer) if output.tools else None
        self.builder = OutputBuilder()

    async def start(self) -> None:
        """Waits for the engine to take the request: a refusal is still an HTTP error."""
        await self.gen.start()

    @property
    def finished(self) -> bool:
        return self.response.status not in ("queued", "in_progress")

    def _feed(self, text: str, finished: bool) -> None:
        events = (self._parser.feed(text) if text else []) if self._parser else [ContentDelta(text)]
        if finished and self._parser:
            events += self._parser.finish()
        self.builder.feed(events)

    async def _generate(self) -> AsyncIterator[None]:
        """Runs the generation, folding its text into the output; yields after each step."""
        if not self.gen.started:
            await self.gen.start()
        async for out in self.gen.outputs():
            o = out.outputs[0]
            self._feed(o.delta_text, o.finished)
            yield
        self.builder.close()
        self._finish(self.gen.choices[0].finish_reason)

    async def complete(self) -> ResponseObject:
        try:
            async for _ in self._generate():
                self.builder.take()
        except Exception as exc:
            self.fail(exc)
            raise
        finally:
            self.stop()
        return self.response

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The typed events of a streamed response, `response.created` first."""
        self.builder.emit("response.created", response=self._snapshot())
        self.builder.emit("response.in_progress", response=self._snapshot())
        for event in self.builder.take():
            yield event
        try:
            async for _ in self._generate():
                for event in self.builder.take():
                    yield event
        except Exception as exc:
            self.fail(exc)
            for event in self.builder.take():
                yield event
            yield self.builder.take_emitted("response.failed", response=self._snapshot())
            return
        finally:
            self.stop()
        for event in self.builder.take():
            yield event
        kind = "response.completed" if self.response.status == "completed" else "response.incomplete"
        yield self.builder.take_emitted(kind, response=self._snapshot())

    def stop(self, status: str = "cancelled") -> None:
        """Marks a response that did not finish (client gone, cancelled)."""
        if not self.finished:
            self.builder.close()
            self.builder.take()
            self._settle(status)

    def fail(self, exc: Exception) -> None:
        error = as_api_error(exc)
        self.response.error = ResponseError(code=error.code or "server_error", message=error.message)
        self.stop("failed")

    def _finish(self, reason: str | None) -> None:
        if reason == "length":
            self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
            self._settle("incomplete")
        else:
            self._settle("completed")

    def _settle(self, status: str) -> None:
        response = self.response
        response.status = status  # type: ignore[assignment]
        response.output = self.builder.output
        response.completed_at = int(time.time())
        gen = self.gen
        if gen.started:
            response.usage = ResponseUsage(
                input_tokens=gen.prompt_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=gen.num_cached_tokens),
                output_tokens=gen.completion_tokens,
                total_tokens=gen.prompt_tokens + gen.completion_tokens,
            )

    def _snapshot(self) -> dict[str, Any]:
        return self.response.model_dump(mode="json")
