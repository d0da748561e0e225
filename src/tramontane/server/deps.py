"""FastAPI dependencies: the app's shared objects and the optional API key."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from .errors import APIError
from .metrics import Metrics
from .registry import ModelRegistry


def _models(request: Request) -> ModelRegistry:
    return request.app.state.models


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


Models = Annotated[ModelRegistry, Depends(_models)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]


def require_api_key(request: Request) -> None:
    """With `api_key` set, /v1 needs `Authorization: Bearer <key>` (both SDKs send it)."""
    expected: str | None = request.app.state.api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), expected.encode()):
        raise APIError(401, "Invalid or missing API key", code="invalid_api_key")
