"""The ASGI application."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI

from .. import __version__
from ..control.install import install as install_control_plane
from ..control.plane import ControlPlane
from ..finetune.api import install as install_finetune
from ..finetune.service import FineTuning
from ..sandbox import SandboxError, SandboxManager, create_router
from ..tenancy import Capability, Principal, Tenancy, request_logs_router, require
from ..tenancy.admin_api import router as admin_router
from . import chat, completions, embeddings, health, models
from .batch import batch_executor
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from .protocol import ErrorResponse
from .registry import ModelRegistry
from .sleep import sleep_router

if TYPE_CHECKING:
    from ..agents.backend import ChatBackend

MAX_BODY_BYTES = 8 * 1024 * 1024

log = logging.getLogger(__name__)
_sandbox_key = require(Capability.SANDBOX)


async def _sandbox_owner(principal: Annotated[Principal, Depends(_sandbox_key)]) -> str:
    """Sandboxes belong to the caller's workspace; others' answer 404."""
    return principal.workspace_id


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)}


def create_app(
    registry: ModelRegistry,
    tenancy: Tenancy,
    *,
    sandboxes: SandboxManager | None = None,
    control_plane: ControlPlane | None = None,
    agent_backend: ChatBackend | None = None,
    agent_sandbox_idle_timeout_s: float = 600.0,
    finetune: FineTuning | None = None,
    replica_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """An app serving `registry`'s models to `tenancy`'s keys, with the admin API, the
    agents, conversations and libraries APIs, and, when given, the sandbox API, the
    deployments API + router and the files, fine-tuning and batch APIs. Its lifespan
    starts and stops the engines, sandboxes, control plane and training worker (the
    caller owns `tenancy`). Conversations call their models through `agent_backend`
    (default: the registry's engines); their code runs in `sandboxes`, reclaimed after
    `agent_sandbox_idle_timeout_s` unused. With `replica_token` it is a deployment's
    replica, put to sleep and woken by its control plane (server/sleep.py)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        tenancy.request_logs.start()  # its thread also purges expired logs
        if finetune is not None:
            await finetune.start()
        if control_plane is not None:
            await control_plane.start()
        if sandboxes is not None:
            try:
                await sandboxes.start()
            except SandboxError as exc:  # e.g. no bubblewrap: the rest of the platform still serves
                log.warning("sandboxes are unavailable: %s", exc.message)
        # Leave the long-lived heap (engines, modules, routes: ~300,000 objects with the
        # default model) out of the cyclic collector. A full collection walks all of it
        # with the GIL held: under 64 concurrent streams it stalled the engine and every
        # stream for up to 237 ms; with the heap frozen, 15 ms. Reference counting still
        # frees frozen objects; only cycles among those let go early wait for shutdown.
        gc.collect()  # start-up's own garbage, not to be frozen with the rest
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # an app's engines stay collectable in a process that goes on (tests)
            if sandboxes is not None:
                await sandboxes.shutdown()
            if control_plane is not None:
                await control_plane.stop()
            if finetune is not None:
                await finetune.stop()
            await registry.shutdown()

    # Here, not at the top: the agents' routes build on this package's modules.
    from ..agents.api import build_router as build_agents_router
    from ..agents.backend import EngineBackend

    app = FastAPI(title="Tramontane", version=__version__, lifespan=lifespan)
    app.state.models = registry
    app.state.metrics = metrics = Metrics(registry, tenancy.request_logs, tenancy.usage_writer)
    tenancy.install(app)

    # FastAPI builds a router's routes on the first request that is matched against
    # them, in order: the probes come first, so that a replica's readiness probe
    # (on the path of every wake from zero) does not pay for the routes behind it.
    # Probes and /metrics stay outside: orchestrators and scrapers hold no key.
    app.include_router(health.router)
    # Their routes are InferenceRoutes: key checked, metered. Each router is included
    # in the app itself: FastAPI matches a request again at every level of nested
    # routers, and one level less halves that work on every inference request.
    for module in (chat, completions, embeddings, models):
        app.include_router(module.router, responses=_ERRORS)
    if replica_token is None:  # a replica serves its models only
        app.include_router(admin_router)
        app.include_router(request_logs_router, responses=_ERRORS)
        app.include_router(
            build_agents_router(
                tenancy.store,
                registry,
                tenancy.home,
                agent_backend or EngineBackend(registry, metrics),
                sandboxes,
                sandbox_idle_timeout_s=agent_sandbox_idle_timeout_s,
            ),
            responses=_ERRORS,
        )
    else:
        app.include_router(sleep_router(registry, replica_token))
    if sandboxes is not None:
        app.include_router(create_router(sandboxes, owner=_sandbox_owner))
    if control_plane is not None:
        install_control_plane(app, control_plane, tenancy)
    if finetune is not None:
        finetune.batches.execute = batch_executor(registry, metrics, tenancy)
        install_finetune(app, finetune)

    install_error_handlers(app)
    # Added last, so outermost: the request id and metrics cover every response.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
