"""Liveness, readiness and Prometheus endpoints (outside /v1, never behind the API key)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from ..inference.protocol import HealthStatus
from .deps import MetricsDep, Models

router = APIRouter()


@router.get("/health", response_model=HealthStatus)
async def health(request: Request) -> HealthStatus:
    """Alive; `warnings` names what serves in a degraded way (features put their
    checks in `app.state.health_checks`)."""
    checks: tuple[Callable[[], str | None], ...] = getattr(request.app.state, "health_checks", ())
    return HealthStatus(status="ok", warnings=[warning for check in checks if (warning := check())])


@router.get("/ready", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def ready(models: Models) -> HealthStatus | JSONResponse:
    if not models.ready:
        body = HealthStatus(status="unavailable", models=models.names())
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    return HealthStatus(status="ready", models=models.names())


@router.get("/metrics", include_in_schema=False)
async def metrics(metrics: MetricsDep) -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
