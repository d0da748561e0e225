"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter

from ..inference.embeddings import embed
from ..inference.fast_path import Call, InferenceRoute
from ..inference.protocol import EmbeddingRequest, EmbeddingResponse

router = APIRouter(route_class=InferenceRoute)


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, call: Call) -> EmbeddingResponse:
    response = await embed(call.models, body)
    call.meter.track(response.model, prompt_tokens=response.usage.prompt_tokens, response=lambda: response)
    return response
