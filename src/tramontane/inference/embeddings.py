"""Embeddings of a request's inputs: the path of /v1/embeddings and the Batch API."""

from __future__ import annotations

import base64
import uuid

import anyio.to_thread

from ..errors import Invalid
from .protocol import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from .registry import ModelRegistry

MAX_INPUTS = 2048  # OpenAI's limit per request


async def embed(models: ModelRegistry, body: EmbeddingRequest) -> EmbeddingResponse:
    """The embeddings of `body`'s inputs (the route's and the Batch API's path)."""
    entry = models.embedding(body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if len(texts) > MAX_INPUTS:
        raise Invalid(f"at most {MAX_INPUTS} inputs per request", param="input")
    dimensions = body.dimensions if body.dimensions is not None else body.output_dimension
    if dimensions is not None and dimensions != entry.model.dim:
        # MiniLM-style models are not trained to be truncated (no Matryoshka), so only the full size.
        raise Invalid(f"'{entry.name}' only produces {entry.model.dim} dimensions", param="dimensions")
    # One forward pass at a time per model: concurrent ones would only fight over the CPU.
    async with entry.lock:
        vectors, counts = await anyio.to_thread.run_sync(entry.model.embed, texts)
    data = []
    for i, vector in enumerate(vectors):
        if body.encoding_format == "base64":
            # Little-endian float32, which is what the openai SDK decodes.
            value: list[float] | str = base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
        else:
            value = vector.tolist()
        data.append(Embedding(index=i, embedding=value))
    tokens = sum(counts)
    return EmbeddingResponse(
        id=f"embd-{uuid.uuid4().hex}",
        model=entry.name,
        data=data,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
