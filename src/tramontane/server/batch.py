"""How the Batch API runs one request line: through the same code as the
/v1/chat/completions and /v1/embeddings routes, without an HTTP request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from . import chat, embeddings
from .errors import APIError
from .metrics import Metrics
from .protocol import ChatCompletionRequest, EmbeddingRequest
from .registry import ModelRegistry

# execute(endpoint, body, workspace_id): the workspace's fine-tuned models are among those a body may name.
Executor = Callable[[str, dict[str, Any], str], Awaitable[dict[str, Any]]]


def batch_executor(models: ModelRegistry, metrics: Metrics) -> Executor:
    async def execute(endpoint: str, body: dict[str, Any], workspace_id: str) -> dict[str, Any]:
        try:
            if endpoint == "/v1/chat/completions":
                request = ChatCompletionRequest.model_validate(body)
                if request.stream:
                    raise APIError(400, "batch requests cannot stream", param="stream")
                response = await chat.complete(models, metrics, request, workspace_id)
            else:
                response = await embeddings.embed(models, EmbeddingRequest.model_validate(body))
        except ValidationError as exc:
            first = exc.errors()[0]
            location = ".".join(str(part) for part in first["loc"])
            raise APIError(422, f"{location}: {first['msg']}", param=location or None) from None
        return response.model_dump(mode="json", exclude_none=True)

    return execute
