"""A chat request made ready for the engine (`prepare`), and its answer as a chat
completion, whole or streamed: the path of /v1/chat/completions, FIM, the Batch API
and the agents' conversation loop alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..engine import ImageInput, Tokenizer, TokenLogprob
from ..errors import Invalid
from .generation import Generation, usage
from .images import IMAGE_PARTS, ImageLoader, has_images
from .logprobs import chat_logprobs
from .metering import RequestMeter
from .metrics import Metrics
from .mistral_tool_calls import MistralToolCallParser, parse_mistral_tool_calls
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Delta,
    DeltaToolCall,
    NamedToolChoice,
    ResponseMessage,
    ToolCall,
    Usage,
)
from .registry import ChatModel, ModelRegistry
from .sampling import finish_reason, sampling_params
from .streaming import DONE, EventStreamResponse, sse, sse_error, until_disconnected
from .tool_calls import ContentDelta, ToolCallStreamParser, parse_tool_calls, prepare_messages

# Mistral's `safe_prompt`: this text goes before the system prompt.
SAFETY_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity."
)


@dataclass
class ChatOutput:
    """How generated text becomes a chat message."""

    tokenizer: Tokenizer
    tools: bool = False  # parse tool calls out of the text
    prefix: str = ""  # text the model continued; part of the returned content
    logprobs: bool = False


def prepare(
    models: ModelRegistry, metrics: Metrics, body: ChatCompletionRequest, workspace_id: str | None
) -> tuple[Generation, ChatOutput]:
    """The engine request for `body` (not started yet), and how its text becomes messages;
    `workspace_id`'s fine-tuned models are among those it may name (None: shared models only).
    Also the agents' conversation loop's way to call a model."""
    model = models.chat(body.model, workspace_id)
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []] if body.tool_choice != "none" else []
    tool_choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, NamedToolChoice) else body.tool_choice
    prompt, prefix, images = _render_prompt(models.images, model, body, tools, workspace_id)
    factory = model.grammar.constraint_factory(
        body.response_format.model_dump(by_alias=True) if body.response_format else None,
        tools or None,
        tool_choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
    )
    params = sampling_params(
        body,
        n=body.n,
        max_tokens=body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        constraint_factory=factory,
        lora=model.lora,
    )
    gen = Generation(model.engine, model.name, prompt, params, metrics, "chatcmpl", images)
    return gen, ChatOutput(model.engine.tokenizer, bool(tools), prefix, bool(body.logprobs))


async def prepare_async(
    models: ModelRegistry, metrics: Metrics, body: ChatCompletionRequest, workspace_id: str | None
) -> tuple[Generation, ChatOutput]:
    """`prepare`, with a request's images read, decoded and resized in a worker
    thread: the event loop goes on serving meanwhile (a remote image may take seconds)."""
    if has_images([m.model_dump(include={"content"}) for m in body.messages]):
        return await asyncio.to_thread(prepare, models, metrics, body, workspace_id)
    return prepare(models, metrics, body, workspace_id)


async def complete(
    models: ModelRegistry, metrics: Metrics, body: ChatCompletionRequest, workspace_id: str
) -> ChatCompletionResponse:
    """A whole (non-streamed) completion outside any HTTP request: the Batch API's path."""
    gen, output = prepare(models, metrics, body, workspace_id)
    await gen.run()
    return _response(gen, output)


async def respond(
    request: Request, meter: RequestMeter, gen: Generation, output: ChatOutput, stream: bool, include_usage: bool
) -> Response | ChatCompletionResponse:
    meter.track(gen.model, [gen], response=lambda: _response(gen, output))
    if stream:
        await until_disconnected(request, gen.start())
        return EventStreamResponse(meter.guard(_stream(gen, output, include_usage)))
    await until_disconnected(request, gen.run())
    return _response(gen, output)


def _response(gen: Generation, output: ChatOutput) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=gen.id,
        created=gen.created,
        model=gen.model,
        choices=[
            _choice(i, choice.text, choice.logprobs, finish_reason(choice.finish_reason), output)
            for i, choice in enumerate(gen.choices)
        ],
        usage=usage([gen]),
    )


def _choice(index: int, text: str, logprobs: list[TokenLogprob], reason: str | None, output: ChatOutput) -> ChatChoice:
    content: str | None = output.prefix + text
    calls: list[ToolCall] = []
    if output.tools:
        parse = parse_mistral_tool_calls if _writes_mistral_calls(output.tokenizer) else parse_tool_calls
        content, parsed = parse(content)
        calls = [ToolCall.model_validate({**call.to_openai(), "index": k}) for k, call in enumerate(parsed)]
    return ChatChoice(
        index=index,
        message=ResponseMessage(content=content, tool_calls=calls or None),
        finish_reason="tool_calls" if calls else reason or "stop",
        logprobs=chat_logprobs(output.tokenizer, logprobs) if output.logprobs else None,
    )


def prompt_token_ids(
    model: ChatModel,
    body: ChatCompletionRequest,
    add_generation_prompt: bool = True,
    images: ImageLoader | None = None,
    workspace_id: str | None = None,
) -> list[int]:
    """The prompt `body` gives `model`, as a chat completion would send it (/v1/tokenize's
    way); `images` reads the request's images, for a model that reads them."""
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []] if body.tool_choice != "none" else []
    return _render_prompt(images, model, body, tools, workspace_id, add_generation_prompt)[0]


def _render_prompt(
    images: ImageLoader | None,
    model: ChatModel,
    body: ChatCompletionRequest,
    tools: list[dict],
    workspace_id: str | None,
    add_generation_prompt: bool = True,
) -> tuple[list[int], str, list[ImageInput]]:
    """Prompt token ids, the assistant prefix the model continues (Mistral's `prefix`),
    and the prompt's images, in the order of their [IMG] tokens."""
    reads_images = model.engine.model_config.vision is not None and images is not None
    messages = []
    seen = 0
    for m in body.messages:
        message = _template_message(m.model_dump(exclude_none=True), model.name, reads_images)
        if isinstance(message["content"], list):
            assert images is not None
            message["content"] = images.load_parts(message["content"], workspace_id, seen)
            seen += sum(part["type"] == "image" for part in message["content"])
        messages.append(message)
    prefix = ""
    if body.messages[-1].role == "assistant" and body.messages[-1].prefix:
        prefix = messages.pop()["content"]
    if body.safe_prompt:
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{SAFETY_PROMPT}\n\n{messages[0]['content']}"}
        else:
            messages.insert(0, {"role": "system", "content": SAFETY_PROMPT})
    tokenizer = model.engine.tokenizer
    messages = prepare_messages(messages, tools, model.tools_in_template)
    template_tools = tools if model.tools_in_template and tools else None
    if seen:
        prompt, pixels = tokenizer.encode_chat_with_images(messages, template_tools, prefix)
        return prompt, prefix, [ImageInput.from_array(p) for p in pixels]
    prompt = tokenizer.encode_chat(messages, template_tools, prefix, add_generation_prompt, body.chat_template_kwargs)
    return prompt, prefix, []


def _writes_mistral_calls(tokenizer: Tokenizer) -> bool:
    return tokenizer.tool_call_format.startswith("mistral")


ToolCallParser = ToolCallStreamParser | MistralToolCallParser


def tool_call_parser(tokenizer: Tokenizer, whole_calls: bool = False) -> ToolCallParser:
    """The parser of the tool calls `tokenizer`'s model writes (the Responses API's too).
    `whole_calls`: each call in one delta, never argument fragments. Chat completion
    streams want that: Mistral's clients (the mistralai SDK among them) refuse a
    tool_calls delta without a function name, and OpenAI's take a whole call as well.
    Mistral-format calls always come whole (mistral_tool_calls.py)."""
    if _writes_mistral_calls(tokenizer):
        return MistralToolCallParser(stream_calls=True)
    return ToolCallStreamParser(whole_calls=whole_calls)


def _template_message(message: dict[str, Any], model: str, reads_images: bool = False) -> dict[str, Any]:
    """A request message as chat templates expect it: string content, JSON-string
    arguments; for a model that reads images, a user message with images keeps its
    list of text and image parts."""
    message.pop("prefix", None)
    if message["role"] == "developer":
        message["role"] = "system"
    content = message.get("content")
    if reads_images and isinstance(content, list) and any(p["type"] in IMAGE_PARTS for p in content):
        if message["role"] != "user":
            raise Invalid("Images are only read in user messages", param="messages")
        if unknown := [p["type"] for p in content if p["type"] not in (*IMAGE_PARTS, "text")]:
            raise Invalid(f"Content parts of type '{unknown[0]}' are not supported", param="messages")
        return message
    message["content"] = _text(content, model)
    for call in message.get("tool_calls", []):
        if not isinstance(call["function"]["arguments"], str):
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    return message


def _text(content: str | list[dict[str, Any]] | None, model: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part["type"] in IMAGE_PARTS:
            raise Invalid(f"The model '{model}' does not accept images: it is a text-only model", param="messages")
        if part["type"] != "text":
            raise Invalid(f"Content parts of type '{part['type']}' are not supported", param="messages")
        texts.append(part.get("text") or "")
    return "\n".join(texts)


def _chunk(gen: Generation, choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
    # `object` is passed although it has a default: chunks are serialized with exclude_unset.
    chunk = ChatCompletionChunk(
        id=gen.id, object="chat.completion.chunk", created=gen.created, model=gen.model, choices=choices
    )
    if usage is not None:
        chunk.usage = usage
    return sse(chunk)


async def _stream(gen: Generation, output: ChatOutput, include_usage: bool) -> AsyncIterator[bytes]:
    n = len(gen.choices)
    parsers = [tool_call_parser(output.tokenizer, whole_calls=True) if output.tools else None for _ in range(n)]
    # The role goes in each choice's first chunk and never again.
    yield _chunk(
        gen, [ChatChunkChoice(index=i, delta=Delta(role="assistant", content=""), finish_reason=None) for i in range(n)]
    )
    pending_prefix = [output.prefix] * n
    try:
        async for out in gen.outputs():
            for o in out.outputs:
                text, pending_prefix[o.index] = pending_prefix[o.index] + o.delta_text, ""
                deltas = _deltas(parsers[o.index], text, o.finished)
                logprobs = chat_logprobs(output.tokenizer, o.delta_logprobs) if output.logprobs else None
                if logprobs is not None and logprobs.content and not deltas:
                    deltas = [Delta()]
                for k, delta in enumerate(deltas):
                    choice = ChatChunkChoice(index=o.index, delta=delta, finish_reason=None)
                    if k == 0 and logprobs is not None and logprobs.content:
                        choice.logprobs = logprobs
                    yield _chunk(gen, [choice])
                if o.finished:
                    parser = parsers[o.index]
                    reason = "tool_calls" if parser and parser.num_calls else finish_reason(o.finish_reason)
                    last = ChatChunkChoice(index=o.index, delta=Delta(), finish_reason=reason)
                    # Mistral clients read usage from the last chunk that has a finish_reason.
                    yield _chunk(gen, [last], usage([gen]) if out.finished else None)
    except Exception as exc:
        yield sse_error(exc)
        return
    if include_usage:
        yield _chunk(gen, [], usage([gen]))
    yield DONE


def _deltas(parser: ToolCallParser | None, text: str, finished: bool) -> list[Delta]:
    """Chunk deltas for new text, in order; a tool-call index appears once per delta."""
    if parser is None:
        return [Delta(content=text)] if text else []
    events = parser.feed(text) if text else []
    if finished:
        events += parser.finish()
    deltas: list[Delta] = []
    for event in events:
        if isinstance(event, ContentDelta):
            deltas.append(Delta(content=event.text))
            continue
        entry = DeltaToolCall.model_validate(event.to_openai())
        current = deltas[-1] if deltas else None
        if current is None or current.tool_calls is None or any(c.index == entry.index for c in current.tool_calls):
            deltas.append(Delta(tool_calls=[entry]))
        else:
            current.tool_calls.append(entry)
    return deltas
