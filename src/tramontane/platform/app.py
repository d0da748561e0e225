"""The ASGI application: every feature's routes, and their services entered in
one `AsyncExitStack`."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..agents.backend import ChatBackend
from ..control.plane import ControlPlane
from ..control.seat import ControlSeat
from ..docai import DocumentReader
from ..finetune.service import FineTuning
from ..inference.metrics import Metrics
from ..inference.registry import ModelRegistry
from ..sandbox import SandboxManager
from ..server.errors import install_error_handlers
from ..server.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from ..tenancy import Tenancy
from . import features
from .features import Feature
from .sandbox_hosts import SandboxHosts

MAX_BODY_BYTES = 8 * 1024 * 1024

log = logging.getLogger(__name__)


def create_app(
    registry: ModelRegistry,
    tenancy: Tenancy,
    *,
    sandboxes: SandboxManager | None = None,
    sandbox_hosts: SandboxHosts | None = None,
    control_plane: ControlPlane | None = None,
    control_seat: ControlSeat | None = None,
    agent_backend: ChatBackend | None = None,
    agent_sandbox_idle_timeout_s: float = 600.0,
    finetune: FineTuning | None = None,
    replica_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """An app serving `registry`'s models to `tenancy`'s keys, with the admin API, the
    agents, conversations and libraries APIs, and, when given, the sandbox API, the
    deployments API + router (run while this gateway leads, with `control_seat`),
    sandboxes placed on and reached through the registered hosts (with
    `sandbox_hosts`) and
    the files, fine-tuning and batch APIs. Its lifespan
    starts and stops the features' services (the caller owns `tenancy`).
    Conversations call their models through `agent_backend` (default: the registry's
    engines); their code runs in `sandboxes`, reclaimed after
    `agent_sandbox_idle_timeout_s` unused. With `replica_token` it is a deployment's
    replica, put to sleep and woken by its control plane (server/sleep.py), and
    serves its models only."""
    metrics = Metrics(registry, tenancy.request_logs, tenancy.usage_writer)
    listed = platform_features(
        registry,
        tenancy,
        metrics,
        sandboxes=sandboxes,
        sandbox_hosts=sandbox_hosts,
        control_plane=control_plane,
        control_seat=control_seat,
        agent_backend=agent_backend,
        agent_sandbox_idle_timeout_s=agent_sandbox_idle_timeout_s,
        finetune=finetune,
        replica_token=replica_token,
    )
    return assemble(listed, tenancy, metrics, max_body_bytes=max_body_bytes)


def platform_features(
    registry: ModelRegistry,
    tenancy: Tenancy,
    metrics: Metrics,
    *,
    sandboxes: SandboxManager | None = None,
    sandbox_hosts: SandboxHosts | None = None,
    control_plane: ControlPlane | None = None,
    control_seat: ControlSeat | None = None,
    agent_backend: ChatBackend | None = None,
    agent_sandbox_idle_timeout_s: float = 600.0,
    finetune: FineTuning | None = None,
    replica_token: str | None = None,
) -> list[Feature]:
    """The features of the platform, in the order their routes are matched and
    their services start (see `create_app` for the arguments)."""
    listed = [features.inference_api(registry, metrics)]
    agents: features.Feature | None = None
    if replica_token is None:
        reader = DocumentReader()
        listed.append(features.admin(tenancy))
        listed.append(features.moderation(registry, tenancy.home))
        listed.append(features.document_ai(reader))
        agents = features.agents(
            tenancy, registry, agent_backend, metrics, sandboxes, agent_sandbox_idle_timeout_s, reader
        )
        listed.append(agents)
        listed.append(features.responses(tenancy))
    else:
        listed.append(features.replica_control(registry, replica_token))
    if finetune is not None:
        listed.append(features.fine_tuning(finetune, registry, metrics, tenancy))
        if agents is not None:  # evaluations need the Files API; their targets include agents
            listed.append(features.evaluations(tenancy, finetune, registry, metrics, agents.state["agents"]))
    if control_plane is not None:
        listed.append(features.deployments(control_plane, tenancy, metrics, control_seat))
    if sandboxes is not None:
        listed.append(features.sandboxes(sandboxes, metrics, sandbox_hosts))
    if replica_token is None:
        listed.append(features.console())
    return listed


def assemble(listed: Sequence[Feature], tenancy: Tenancy, metrics: Metrics, *, max_body_bytes: int) -> FastAPI:
    """One app from `listed`: their routes in list order, their services started in
    that order and stopped in the reverse one."""
    app = FastAPI(title="Tramontane", version=__version__, lifespan=_lifespan(listed))
    tenancy.install(app)
    for feature in listed:
        for name, value in feature.state.items():
            setattr(app.state, name, value)
        for route in feature.routes:
            app.include_router(route.router, responses=route.responses)
        for path, mounted in feature.mounts:
            app.mount(path, mounted)
        for middleware in feature.middleware:
            app.add_middleware(middleware.cls, *middleware.args, **middleware.kwargs)
    install_error_handlers(app)
    # Added last, so outermost: the request id and metrics cover every response.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


def _lifespan(listed: Sequence[Feature]):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for feature in listed:
                await _enter(stack, feature)
            with _frozen_heap():
                yield

    return lifespan


async def _enter(stack: AsyncExitStack, feature: Feature) -> None:
    """Starts `feature` and has `stack` stop it. A feature that cannot run on this
    host (one of its `unavailable` errors) is logged and stopped with the rest."""
    try:
        await feature.start()
    except feature.unavailable as exc:
        log.warning("%s are unavailable: %s", feature.name, getattr(exc, "message", exc))
    stack.push_async_callback(feature.stop)


class _frozen_heap:
    """Leaves the long-lived heap (engines, modules, routes: ~300,000 objects with
    the default model) out of the cyclic collector while serving. A full collection
    walks all of it with the GIL held: under 64 concurrent streams it stalled the
    engine and every stream for up to 237 ms; with the heap frozen, 15 ms. Reference
    counting still frees frozen objects; only cycles among those let go early wait
    for shutdown."""

    def __enter__(self) -> None:
        gc.collect()  # start-up's own garbage, not to be frozen with the rest
        gc.freeze()

    def __exit__(self, *exc_info: object) -> None:
        gc.unfreeze()  # an app's engines stay collectable in a process that goes on (tests)
