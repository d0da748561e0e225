"""What the platform is made of: each feature as its routes and its lifespan.

A `Feature` is data, not behaviour: its routers (included in the app in the order
the features are listed), its ASGI mounts, what it puts on `app.state` for its
dependencies, and the service that `app.create_app` starts before serving and
stops after. The builders below are the only code that knows how a feature's
parts are wired to one another (e.g. fine-tuned models served by the registry)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from ..agents import api as agents_api
from ..agents.backend import ChatBackend, EngineBackend
from ..agents.service import AgentsService
from ..console import router as console_router
from ..docai import DocumentReader
from ..control.api import router as deployments_router
from ..control.domains import DomainRouting
from ..control.domains_api import router as domains_router
from ..control.install import SERVE_PREFIX
from ..control.forwarding import FollowerForwarding, forwarding_client
from ..control.metrics import DeploymentCollector
from ..control.plane import ControlPlane
from ..control.router import create_router_app
from ..control.seat import ControlSeat
from ..control.secrets_api import router as secrets_router
from ..evaluations import api as evaluations_api
from ..evaluations.service import Evaluations
from ..finetune import api as finetune_api
from ..finetune.batch_executor import batch_executor
from ..finetune.moderation import MODERATION_MODEL, moderation_classifier
from ..finetune.service import FineTuning
from ..inference.metrics import Metrics
from ..inference.protocol import ErrorResponse
from ..inference.registry import ModelRegistry
from ..responses.api import create_router as create_responses_router
from ..responses.service import Responses
from ..sandbox import SandboxError, SandboxManager, create_router
from ..sandbox.host_routing import PortHostRouting
from ..sandbox.metrics import SandboxCollector
from ..sandbox.node import NODE_PREFIX, node_api
from ..sandbox.port_links import LinkSigner, PortLinkCredentials, RedactLinkTokens, load_secret
from ..server import chat, classifiers, completions, embeddings, health, lora_admin, models, ocr, tokenize
from ..server.sleep import sleep_router
from ..tenancy import Tenancy, request_logs_router
from ..tenancy.admin_api import router as admin_router
from ..store import tramontane_home
from .sandbox_hosts import SandboxForwarding, SandboxHosts, hosts_router
from .sandbox_links import links_router
from .sandbox_owner import PortLinks, sandbox_owner

log = logging.getLogger(__name__)

# The error bodies every key-checked route may answer with, for the OpenAPI schema.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)
}


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Route:
    """A router and how it is included: `responses` adds to its OpenAPI schema."""

    router: APIRouter
    responses: dict[int | str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class Feature:
    name: str
    routes: tuple[Route, ...] = ()
    mounts: tuple[tuple[str, ASGIApp], ...] = ()
    state: dict[str, Any] = field(default_factory=dict)
    # ASGI middleware around the whole app (inside the request context and body
    # limit), e.g. routing by Host header.
    middleware: tuple[Middleware, ...] = ()
    start: Callable[[], Awaitable[None]] = _nothing
    stop: Callable[[], Awaitable[None]] = _nothing
    # Errors of `start` that leave the feature unavailable and the rest serving
    # (e.g. no bubblewrap on the host); `stop` still runs for it.
    unavailable: tuple[type[Exception], ...] = ()


def inference_api(registry: ModelRegistry, metrics: Metrics) -> Feature:
    """The probes first: FastAPI builds a router's routes on the first request that
    is matched against them, in order, and a replica's readiness probe (on the path
    of every wake from zero) must not pay for the routes behind it. Each router is
    included in the app itself: FastAPI matches a request again at every level of
    nested routers, and one level less halves that work on every inference request."""
    modules = (chat, completions, embeddings, models, tokenize, lora_admin, classifiers)
    inference = tuple(Route(module.router, ERRORS) for module in modules)
    return Feature(
        "inference",
        routes=(Route(health.router), *inference),
        state={"models": registry, "metrics": metrics},
        start=registry.start,
        stop=registry.shutdown,
    )


def replica_control(registry: ModelRegistry, token: str) -> Feature:
    """A deployment's replica: put to sleep and woken by its control plane."""
    return Feature("replica", routes=(Route(sleep_router(registry, token)),))


def admin(tenancy: Tenancy) -> Feature:
    """The admin API and a workspace's stored requests. The caller owns `tenancy`
    and closes it; only the request-log thread (which also purges expired logs)
    starts with the app."""

    async def start() -> None:
        tenancy.request_logs.start()

    return Feature("admin", routes=(Route(admin_router), Route(request_logs_router, ERRORS)), start=start)


def agents(
    tenancy: Tenancy,
    registry: ModelRegistry,
    backend: ChatBackend | None,
    metrics: Metrics,
    sandboxes: SandboxManager | None,
    sandbox_idle_timeout_s: float,
    reader: DocumentReader,
) -> Feature:
    """Agents, conversations and libraries; conversations call their models through
    `backend` (default: the registry's engines) and run code in `sandboxes`."""
    service = AgentsService.open(
        tenancy.store,
        registry,
        tenancy.home,
        backend or EngineBackend(registry, metrics),
        sandboxes,
        reader,
        sandbox_idle_timeout_s=sandbox_idle_timeout_s,
    )
    routes = tuple(Route(router, ERRORS) for router in agents_api.routers)
    return Feature("agents", routes=routes, state={"agents": service})


def moderation(registry: ModelRegistry, home: Path) -> Feature:
    """The default moderation model, over the first embedding model: its head is
    trained on first use and cached under `home` (finetune/moderation)."""
    if registry.has_embedding() and MODERATION_MODEL not in registry.names():
        registry.add(moderation_classifier(registry.default_embedding(), home / "models" / "moderation"))
    return Feature("moderation")


def document_ai(reader: DocumentReader) -> Feature:
    """`/v1/ocr`: PDFs and images to pages of Markdown (uploaded files through the
    fine-tuning feature's file store, when the platform has one)."""
    return Feature("document-ai", routes=(Route(ocr.router, ERRORS),), state={"document_reader": reader})


def evaluations(
    tenancy: Tenancy, finetune: FineTuning, registry: ModelRegistry, metrics: Metrics, agents: AgentsService | None
) -> Feature:
    """Evaluation and red-team jobs over the Files API's datasets, calling the
    registry's models and the workspace's agents (with their real tools)."""
    service = Evaluations(tenancy, finetune.files, registry, metrics, agents, finetune.ray_batch())
    return Feature(
        "evaluations",
        routes=(Route(evaluations_api.router, ERRORS),),
        state={"evaluations": service},
        start=service.start,
        stop=service.stop,
    )


def responses(tenancy: Tenancy) -> Feature:
    """OpenAI's Responses API; stopping it cancels the background responses still running."""
    service = Responses(tenancy.store, tenancy)
    return Feature("responses", routes=(Route(create_responses_router(service), ERRORS),), stop=service.stop)


def fine_tuning(service: FineTuning, registry: ModelRegistry, metrics: Metrics, tenancy: Tenancy) -> Feature:
    """Files, fine-tuning jobs and the Batch API, whose lines run through the inference path."""
    service.jobs.embedding_models = registry.embedding_checkpoints()
    service.batches.execute = batch_executor(registry, metrics, tenancy, service.ray_batch())
    service.on_classifier_ready = registry.add_classifier
    registry.images.read_file = service.files.read_image
    routes = tuple(Route(router) for router in finetune_api.routers)
    return Feature("fine-tuning", routes=routes, state={"finetune": service}, start=service.start, stop=service.stop)


def deployments(plane: ControlPlane, tenancy: Tenancy, metrics: Metrics, seat: ControlSeat | None = None) -> Feature:
    """`/v1/deployments`, `/v1/secrets`, and the deployments' router mounted at
    `/serve` and in front of the app for requests to the deployments' custom
    domains; each deployment's traffic and replicas on `/metrics`. With a `seat`
    (gateways sharing a database), the plane runs while this gateway leads, and a
    follower relays them all to the leader."""
    metrics.registry.register(DeploymentCollector(plane))
    proxy = create_router_app(plane, tenancy)
    routes = (Route(deployments_router), Route(domains_router, ERRORS), Route(secrets_router))
    mounts = ((SERVE_PREFIX, proxy),)
    domain_routing = Middleware(DomainRouting, domains=plane.domains, router=proxy)
    if seat is None:
        return Feature(
            "deployments", routes=routes, mounts=mounts, middleware=(domain_routing,),
            state={"control_plane": plane}, start=plane.start, stop=plane.stop,
        )
    client = forwarding_client()

    async def stop() -> None:
        await seat.stop()
        await client.aclose()

    # Listed after the domain routing, so around it: a follower relays a custom
    # domain's requests before they would reach its own (idle) router. Secrets go
    # to the leader too: only its plane knows which deployments use one.
    forwarding = Middleware(
        FollowerForwarding,
        seat=seat,
        prefixes=(deployments_router.prefix, secrets_router.prefix, SERVE_PREFIX),
        client=client,
    )
    return Feature(
        "deployments", routes=routes, mounts=mounts, middleware=(domain_routing, forwarding),
        state={"control_plane": plane, "control_seat": seat}, start=seat.start, stop=stop,
    )


def sandboxes(manager: SandboxManager, metrics: Metrics, hosts: SandboxHosts | None = None) -> Feature:
    """The sandbox API, and each sandbox's CPU, memory and disk use on `/metrics`.
    With `hosts` (gateways sharing a database), sandboxes are placed on and
    reached through the registered sandbox hosts, this gateway's own manager
    among them when it hosts sandboxes (`platform.sandbox_hosts`)."""
    collector = SandboxCollector(manager)
    metrics.registry.register(collector)

    redact = RedactLinkTokens()

    async def start() -> None:
        logging.getLogger("uvicorn.access").addFilter(redact)
        if hosts is not None:
            await hosts.start()  # first: forwarding works even where this host cannot run sandboxes
        await manager.start()
        collector.start()
        if hosts is not None and hosts.agent is not None:
            await hosts.agent.start()

    async def stop() -> None:
        if hosts is not None and hosts.agent is not None:
            await hosts.agent.stop()
        await collector.stop()
        await manager.shutdown()
        if hosts is not None:
            await hosts.stop()
        logging.getLogger("uvicorn.access").removeFilter(redact)

    domain = manager.config.ports_domain
    state_dir = manager.config.state_dir
    signer = LinkSigner(load_secret(Path(state_dir) if state_dir else tramontane_home()))
    # Listed inner first: host routing rewrites a port's name to its path before
    # the link credentials are taken off the request.
    # Forwarding to other hosts innermost: it needs the link credentials taken off.
    forwarding = (Middleware(SandboxForwarding, hosts=hosts),) if hosts is not None else ()
    middleware = (
        *forwarding,
        Middleware(PortLinkCredentials),
        *((Middleware(PortHostRouting, domain=domain),) if domain else ()),
    )
    links = PortLinks(signer, manager, hosts.directory if hosts is not None else None)
    agent = hosts.agent if hosts is not None else None
    mounts = ((NODE_PREFIX, node_api(manager, hosts.token, agent.created)),) if hosts and agent else ()
    return Feature(
        "sandboxes",
        routes=(
            Route(create_router(manager, owner=sandbox_owner)),
            Route(links_router(links)),
            *((Route(hosts_router(hosts.directory), ERRORS),) if hosts is not None else ()),
        ),
        mounts=mounts,
        state={"port_links": links, "health_checks": (manager.default_template.health_warning,)},
        middleware=middleware,
        start=start,
        stop=stop,
        unavailable=(SandboxError,),
    )


def console() -> Feature:
    """The web console at `/`: pages that act through the API above as the signed-in key."""
    return Feature("console", routes=(Route(console_router),))
