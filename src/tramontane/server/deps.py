"""FastAPI dependencies: the app's shared objects (keys and metering: metering.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .metrics import Metrics
from .registry import ModelRegistry


def _models(request: Request) -> ModelRegistry:
    return request.app.state.models


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


Models = Annotated[ModelRegistry, Depends(_models)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]

