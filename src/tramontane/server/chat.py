"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ..inference.chat import prepare_async, respond
from ..inference.fast_path import Call, InferenceRoute
from ..inference.protocol import ChatCompletionRequest, ChatCompletionResponse
from ..inference.streaming import STREAMABLE

router = APIRouter(route_class=InferenceRoute)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=STREAMABLE)
async def create_chat_completion(body: ChatCompletionRequest, call: Call) -> Response | ChatCompletionResponse:
    gen, output = await prepare_async(call.models, call.metrics, body, call.principal.workspace_id)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return await respond(call.request, call.meter, gen, output, body.stream, include_usage)
