"""`tramontane node`: a sandbox host for gateways sharing a PostgreSQL database.

It runs this machine's sandbox manager behind the internal node API, registers
itself (address, CPUs, memory, sandbox slots, tiers) and heartbeats; the
gateways place sandboxes on it and relay their calls (see
`tramontane.platform.sandbox_hosts`)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from rich.console import Console

from ..platform.app import MAX_BODY_BYTES
from ..sandbox import ManagerConfig, SandboxManager
from ..sandbox.errors import SandboxError
from ..sandbox.hosts import DEFAULT_HEARTBEAT_S, HostDirectory
from ..sandbox.metrics import SandboxCollector
from ..sandbox.node import NODE_PREFIX, HostAgent, HostSettings, host_token, node_api
from ..server.middleware import BodySizeLimitMiddleware
from ..store import open_store, tramontane_home
from ..tenancy.pepper import load_pepper
from .up import MicroVMAccelerator, advertised_url, opening_the_database

console = Console(stderr=True)


def node(
    host: Annotated[str, typer.Option(help="Interface the node API listens on (the gateways must reach it).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port of the node API.")] = 8100,
    name: Annotated[
        str | None,
        typer.Option(help="This host's name among the sandbox hosts, stable across restarts. Default: the host name."),
    ] = None,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            envvar="TRAMONTANE_NODE_ADVERTISE_URL",
            help="Where the gateways reach this node. Default: http://HOST:PORT.",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="TRAMONTANE_DATABASE_URL", help="The PostgreSQL database the gateways share."),
    ] = None,
    max_sandboxes: Annotated[int, typer.Option(min=1, help="Sandboxes this host runs at most.")] = 256,
    pool_size: Annotated[int, typer.Option(min=0, help="Tier-1 sandboxes kept started ahead of demand.")] = 4,
    microvm_pool_size: Annotated[int, typer.Option(min=0, help="Tier-2 (microVM) ones.")] = 1,
    default_template: Annotated[
        str,
        typer.Option(
            envvar="TRAMONTANE_SANDBOX_DEFAULT_TEMPLATE",
            help="The template a sandbox gets when its request names none (as `tramontane up`'s "
            "--sandbox-default-template: give hosts and gateways the same).",
        ),
    ] = "data",
    microvm_accelerator: Annotated[
        MicroVMAccelerator, typer.Option(help="How tier-2 sandboxes run their CPU: kvm, tcg or auto.")
    ] = MicroVMAccelerator.AUTO,
    heartbeat_s: Annotated[float, typer.Option(min=0.1, help="Seconds between heartbeats.")] = DEFAULT_HEARTBEAT_S,
) -> None:
    """Host sandboxes for the gateways sharing DATABASE_URL (and TRAMONTANE_KEY_PEPPER)."""
    with opening_the_database():
        store = open_store(database_url)
    if store.is_sqlite:
        store.close()
        console.print("[red]error:[/] sandbox hosts serve gateways sharing a PostgreSQL database (--database-url)")
        raise typer.Exit(2)
    home = tramontane_home()
    name = name or socket.gethostname()
    try:
        token = host_token(load_pepper(home))
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    manager = SandboxManager(
        ManagerConfig(
            max_sandboxes=max_sandboxes,
            pool_size=pool_size,
            microvm_pool_size=microvm_pool_size,
            microvm_accelerator=microvm_accelerator.value,
            max_file_bytes=MAX_BODY_BYTES,
            default_template=default_template,
            build_default_template=True,
            # Paused sandboxes' snapshots: this host's alone, found again when it restarts.
            state_dir=str(home / "nodes" / name),
        )
    )
    address = advertise_url or advertised_url(host, port)
    agent = HostAgent(manager, HostDirectory(store), HostSettings(name, address, heartbeat_s, dedicated=True))
    console.print(f"Sandbox host {name!r} serving gateways at [bold]{address}[/]")
    try:
        uvicorn.run(node_server(manager, agent, token), host=host, port=port, log_level="info")
    finally:
        store.close()


def node_server(manager: SandboxManager, agent: HostAgent, token: str) -> FastAPI:
    """The node API, `/health` and `/metrics` (its sandboxes' CPU, memory and disk,
    as a gateway shows its own); the manager and its registration run with the app."""
    collector = SandboxCollector(manager)
    registry = CollectorRegistry()
    registry.register(collector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await manager.start()
        except SandboxError as exc:
            console.print(f"[red]error:[/] this host cannot run sandboxes: {exc.message}")
            raise
        collector.start()
        try:
            await agent.start()
            yield
        finally:
            await agent.stop()
            await collector.stop()
            await manager.shutdown()

    app = FastAPI(title="Tramontane sandbox host", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "host": agent.name, **manager.stats()}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.mount(NODE_PREFIX, node_api(manager, token, agent.created))
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    return app
