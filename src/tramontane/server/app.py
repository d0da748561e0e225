"""The ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from .. import __version__
from . import chat, completions, embeddings, health, models
from .deps import require_api_key
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from .protocol import ErrorResponse
from .registry import ModelRegistry

MAX_BODY_BYTES = 8 * 1024 * 1024

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 503)}


def create_app(registry: ModelRegistry, *, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """An app serving `registry`'s models; its lifespan starts and stops their engines."""

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
    app.state.api_key = api_key

    v1 = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)
    for module in (chat, completions, embeddings, models):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)

    install_error_handlers(app)
    # Added last, so outermost: the request id and metrics cover every response.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
