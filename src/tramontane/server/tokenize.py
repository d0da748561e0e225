"""POST /v1/tokenize and /v1/detokenize, in vLLM's shapes: a prompt or chat
messages to the token ids a model would read, and token ids back to text.

Metered as requests (a usage row, latency and energy) with no tokens charged:
tokenizing runs no model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..errors import Invalid
from ..inference.chat import prompt_token_ids
from ..inference.fast_path import Call, InferenceRoute
from ..inference.protocol import ChatCompletionRequest, Message, TemplateKwargs, Tool

router = APIRouter(route_class=InferenceRoute)

# Token ids a detokenize request may carry: a whole context window of the largest models.
MAX_DETOKENIZE_TOKENS = 1 << 20


class TokenizeRequest(BaseModel):
    """Either `prompt` (text) or `messages` (rendered by the model's chat template)."""

    model: str
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    tools: list[Tool] | None = None
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages
    add_generation_prompt: bool = True
    chat_template_kwargs: TemplateKwargs = None
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model: str
    tokens: list[int] = Field(max_length=MAX_DETOKENIZE_TOKENS)


class DetokenizeResponse(BaseModel):
    prompt: str


@router.post("/v1/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, call: Call) -> TokenizeResponse:
    model = call.models.chat(body.model, call.principal.workspace_id)
    tokenizer = model.engine.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise Invalid("Give either a prompt or messages", param="prompt")
    if body.prompt is not None:
        tokens = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False)
    else:
        chat: dict[str, Any] = {
            "model": body.model, "messages": body.messages, "tools": body.tools,
            "chat_template_kwargs": body.chat_template_kwargs,
        }
        request = ChatCompletionRequest.model_validate(chat)
        tokens = prompt_token_ids(
            model, request, body.add_generation_prompt, call.models.images, call.principal.workspace_id
        )
        if body.add_special_tokens and tokenizer.bos_token_id is not None and tokens[:1] != [tokenizer.bos_token_id]:
            tokens.insert(0, tokenizer.bos_token_id)
    call.meter.track(model.name)
    return TokenizeResponse(
        count=len(tokens),
        max_model_len=model.engine.max_model_len,
        tokens=tokens,
        token_strs=[tokenizer.token_str(t) for t in tokens] if body.return_token_strs else None,
    )


@router.post("/v1/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, call: Call) -> DetokenizeResponse:
    model = call.models.chat(body.model, call.principal.workspace_id)
    tokenizer = model.engine.tokenizer
    bad = next((t for t in body.tokens if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise Invalid(f"Token id {bad} is not in the model's vocabulary (0 to {tokenizer.vocab_size - 1})",
                      param="tokens")
    call.meter.track(model.name)
    return DetokenizeResponse(prompt=tokenizer.decode(body.tokens, skip_special_tokens=False))
