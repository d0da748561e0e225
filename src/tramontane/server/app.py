"""The ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from .. import __version__
from ..tenancy import Tenancy
from ..tenancy.admin_api import router as admin_router
from . import chat, completions, embeddings, health, models
from .errors import install_error_handlers
from .metering import inference_key
from .metrics import Metrics
from .middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from .protocol import ErrorResponse
from .registry import ModelRegistry

MAX_BODY_BYTES = 8 * 1024 * 1024

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)}


def create_app(registry: ModelRegistry, tenancy: Tenancy, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """An app serving `registry`'s models to `tenancy`'s keys, with the admin API;
    its lifespan starts and stops the engines (the caller owns `tenancy`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await registry.shutdown()

    app = FastAPI(title="Tramontane", version=__version__, lifespan=lifespan)
    app.state.models = registry
    app.state.metrics = metrics = Metrics(registry)
    tenancy.install(app)

    # Probes and /metrics stay outside: orchestrators and scrapers hold no key.
    v1 = APIRouter(dependencies=[Depends(inference_key)], responses=_ERRORS)
    for module in (chat, completions, embeddings, models):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(admin_router)
    app.include_router(health.router)

    install_error_handlers(app)
    # Added last, so outermost: the request id and metrics cover every response.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
