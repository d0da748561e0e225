"""FastAPI dependencies: the app's shared objects (keys and metering: metering.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..inference.metrics import Metrics
from ..inference.registry import ModelRegistry


# Async, though they only read an attribute: FastAPI runs a plain `def` dependency
# in a worker thread, a hop there and back on every request.
async def _models(request: Request) -> ModelRegistry:
    return request.app.state.models


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


Models = Annotated[ModelRegistry, Depends(_models)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]

