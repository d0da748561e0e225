"""POST /v1/completions (OpenAI's legacy text completions) and POST /v1/fim/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter
from starlette.responses import Response

from ..errors import Invalid
from ..inference.chat import ChatOutput, respond
from ..inference.generation import Generation, merged_outputs, run_all, usage
from ..inference.fast_path import Call, InferenceRoute
from ..inference.logprobs import completion_logprobs
from ..inference.protocol import (
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    FIMCompletionRequest,
)
from ..inference.registry import ChatModel
from ..inference.sampling import finish_reason, sampling_params
from ..inference.streaming import DONE, STREAMABLE, EventStreamResponse, sse, sse_error, until_disconnected

router = APIRouter(route_class=InferenceRoute)

# OpenAI's default for this endpoint (chat generates up to the context instead).
DEFAULT_MAX_TOKENS = 16


@router.post("/v1/completions", response_model=CompletionResponse, responses=STREAMABLE)
async def create_completion(body: CompletionRequest, call: Call) -> Response | CompletionResponse:
    model, meter = call.models.chat(body.model, call.principal.workspace_id), call.meter
    if body.echo and body.logprobs is not None:
        # The engine reports logprobs of generated tokens only, not of the prompt.
        raise Invalid("echo cannot be combined with logprobs", param="echo")
    prompts = [_prompt_ids(model, p, body.suffix) for p in _prompts(body.prompt)]
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    params = sampling_params(body, n=body.n, max_tokens=max_tokens, logprobs=body.logprobs, lora=model.lora)
    gens = [Generation(model.engine, model.name, p, params, call.metrics, "cmpl") for p in prompts]
    tokenizer = model.engine.tokenizer
    echoes = [tokenizer.decode(p) if body.echo else "" for p in prompts]
    meter.track(model.name, gens, response=lambda: _response(model, gens, echoes, body.logprobs is not None))
    if body.stream:
        await until_disconnected(call.request, run_all(gens, streamed=True))
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return EventStreamResponse(meter.guard(_stream(model, gens, echoes, body.logprobs is not None, include_usage)))
    await until_disconnected(call.request, run_all(gens, streamed=False))
    return _response(model, gens, echoes, body.logprobs is not None)


def _response(model: ChatModel, gens: list[Generation], echoes: list[str], logprobs: bool) -> CompletionResponse:
    """The whole response (also what a stored streamed request's response is)."""
    choices = []
    for g, gen in enumerate(gens):
        for i, choice in enumerate(gen.choices):
            choices.append(
                CompletionChoice(
                    index=g * len(gen.choices) + i,
                    text=echoes[g] + choice.text,
                    logprobs=completion_logprobs(model.engine.tokenizer, choice.logprobs, len(echoes[g]))
                    if logprobs
                    else None,
                    finish_reason=finish_reason(choice.finish_reason),
                )
            )
    return CompletionResponse(
        id=gens[0].id, created=gens[0].created, model=model.name, choices=choices, usage=usage(gens)
    )


@router.post("/v1/fim/completions", response_model=ChatCompletionResponse, responses=STREAMABLE)
async def create_fim_completion(body: FIMCompletionRequest, call: Call) -> Response | ChatCompletionResponse:
    model = call.models.chat(body.model, call.principal.workspace_id)
    prompt = _fim_prompt(model, body.prompt, body.suffix or "")
    params = sampling_params(body, max_tokens=body.max_tokens, lora=model.lora)
    gen = Generation(model.engine, model.name, prompt, params, call.metrics, "fim")
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return await respond(call.request, call.meter, gen, ChatOutput(model.engine.tokenizer), body.stream, include_usage)


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]  # type: ignore[list-item]
    if not prompt:
        raise Invalid("prompt must not be empty", param="prompt")
    return list(prompt)  # type: ignore[arg-type]


def _prompt_ids(model: ChatModel, prompt: str | list[int], suffix: str | None) -> list[int]:
    tokenizer = model.engine.tokenizer
    if isinstance(prompt, list) and any(not 0 <= t < tokenizer.vocab_size for t in prompt):
        raise Invalid(f"prompt token ids must be in [0, {tokenizer.vocab_size})", param="prompt")
    if suffix is not None:
        return _fim_prompt(model, prompt if isinstance(prompt, str) else tokenizer.decode(prompt), suffix)
    return prompt if isinstance(prompt, list) else tokenizer.encode(prompt, add_special_tokens=True)


def _fim_prompt(model: ChatModel, prefix: str, suffix: str) -> list[int]:
    if model.fim is None:
        raise Invalid(f"The model '{model.name}' was not trained for fill-in-the-middle (it has no FIM tokens)",
            code="fim_not_supported",
            param="model",
        )
    return model.fim.prompt(model.engine.tokenizer, prefix, suffix)


def _chunk(gens: list[Generation], model: str, choices: list[CompletionChoice], with_usage: bool = False) -> bytes:
    # `object` is passed although it has a default: chunks are serialized with exclude_unset.
    chunk = CompletionResponse(
        id=gens[0].id, object="text_completion", created=gens[0].created, model=model, choices=choices
    )
    if with_usage:
        chunk.usage = usage(gens)
    return sse(chunk)


async def _stream(
    model: ChatModel, gens: list[Generation], echoes: list[str], logprobs: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    n = len(gens[0].choices)
    tokenizer = model.engine.tokenizer
    # Offsets of each choice's next text, for logprobs' text_offset.
    offsets = {(g, i): len(echoes[g]) for g in range(len(gens)) for i in range(n)}
    for g, echo in enumerate(echoes):
        if echo:
            yield _chunk(
                gens, model.name, [CompletionChoice(index=g * n + i, text=echo, finish_reason=None) for i in range(n)]
            )
    unfinished = len(gens)
    try:
        async for g, out in merged_outputs(gens):
            unfinished -= out.finished
            for o in out.outputs:
                if not (o.delta_text or o.delta_logprobs or o.finished):
                    continue
                choice = CompletionChoice(
                    index=g * n + o.index, text=o.delta_text, finish_reason=finish_reason(o.finish_reason)
                )
                if logprobs:
                    choice.logprobs = completion_logprobs(tokenizer, o.delta_logprobs, offsets[g, o.index])
                offsets[g, o.index] += len(o.delta_text)
                yield _chunk(gens, model.name, [choice], with_usage=not unfinished and o.finished)
    except Exception as exc:
        yield sse_error(exc)
        return
    if include_usage:
        yield _chunk(gens, model.name, [], with_usage=True)
    yield DONE
