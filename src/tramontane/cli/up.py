"""`tramontane up`: open the tenancy database, load models, then serve the API."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..control.backends.ray import RayBackend, connect
from ..control.plane import ControlPlane
from ..control.scheduler import DEFAULT_MIN_IDLE_S
from ..control.seat import ControlSeat
from ..control.replica import REPLICA_TOKEN_ENV
from ..engine import EngineConfig, ModelLoadError
from ..finetune.ray_runner import RayTraining, RunResources
from ..finetune.service import FineTuning
from ..inference import ModelRegistry, ModelSpec, default_model_specs
from ..inference.images import ImageLimits, ImageLoader
from ..platform.app import MAX_BODY_BYTES, create_app
from ..platform.sandbox_hosts import SandboxHosts
from ..sandbox import ManagerConfig, SandboxManager
from ..sandbox.hosts import HostDirectory
from ..sandbox.node import HostAgent, HostSettings, host_token
from ..store.leases import DEFAULT_TTL_S, Lease
from ..tenancy import AdmissionLimits, Tenancy

console = Console(stderr=True)


class ReplicaBackend(StrEnum):
    LOCAL = "local"
    RAY = "ray"


class JobsExecutor(StrEnum):
    LOCAL = "local"
    RAY = "ray"


class MicroVMAccelerator(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


def up(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", metavar="[NAME=]PATH",
            help="A model to serve (GGUF file, HF or sentence-transformers folder); repeatable. "
            "Default: the bundled SmolLM2-135M-Instruct chat model and all-MiniLM-L6-v2 embeddings.",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="TRAMONTANE_DATABASE_URL",
            help="Database of API keys, limits and usage; share one PostgreSQL database between servers. "
            "Default: SQLite under $TRAMONTANE_HOME (~/.tramontane).",
        ),
    ] = None,
    quantization: Annotated[
        str,
        typer.Option(
            help="Quantization of linear layers: auto (int4 on CPU), none, bf16, int4 (weights only) or int8 "
            "(weights and activations: fastest prefill and many streams on CPU, least faithful)."
        ),
    ] = "auto",
    kv_cache_gb: Annotated[float, typer.Option(help="Memory for each chat model's KV cache, in GiB.")] = 1.0,
    device: Annotated[str, typer.Option(help="Torch device for the chat models, e.g. cpu or cuda.")] = "cpu",
    backend: Annotated[
        ReplicaBackend,
        typer.Option(
            envvar="TRAMONTANE_BACKEND",
            help="Where deployment replicas run: processes on this machine, or actors on a Ray cluster.",
        ),
    ] = ReplicaBackend.LOCAL,
    ray_address: Annotated[
        str | None,
        typer.Option(
            envvar="TRAMONTANE_RAY_ADDRESS",
            help="The Ray cluster for --backend ray and --jobs-executor ray, e.g. 10.0.0.5:6379. Default: RAY_ADDRESS, "
            "else a Ray instance started on this machine.",
        ),
    ] = None,
    jobs_executor: Annotated[
        JobsExecutor,
        typer.Option(
            envvar="TRAMONTANE_JOBS_EXECUTOR",
            help="Where fine-tuning jobs train, and batch and evaluation jobs call base models: on this "
            "gateway, or in a Ray actor per job on a node of the cluster at --ray-address with the resources "
            "the job asks for. Give every gateway sharing a database the same executor.",
        ),
    ] = JobsExecutor.LOCAL,
    job_cpus: Annotated[
        float, typer.Option(min=0.01, help="With --jobs-executor ray: the CPUs a job gets unless it asks.")
    ] = RunResources.cpu,
    job_gpus: Annotated[
        float,
        typer.Option(min=0.0, help="With --jobs-executor ray: the GPUs a job gets unless it asks (0: CPU nodes)."),
    ] = RunResources.gpus,
    microvm_accelerator: Annotated[
        MicroVMAccelerator,
        typer.Option(
            help="How tier-2 (microvm) sandboxes run their CPU: kvm (hardware), tcg (QEMU's emulation: "
            "slow, needs no KVM) or auto (KVM where it can boot the guest, else tcg with a warning).",
        ),
    ] = MicroVMAccelerator.AUTO,
    sandbox_domain: Annotated[
        str | None,
        typer.Option(
            envvar="TRAMONTANE_SANDBOX_DOMAIN",
            help="Also serve sandbox ports at {port}-{sandbox id}.DOMAIN: point a wildcard DNS name (and, with "
            "--tls-cert, a wildcard certificate) at this server.",
        ),
    ] = None,
    sandbox_default_template: Annotated[
        str,
        typer.Option(
            envvar="TRAMONTANE_SANDBOX_DEFAULT_TEMPLATE",
            help="The template a sandbox gets when its request names none: data (Python's data stack, built by "
            "make install, else in the background at start; base meanwhile), base (the host's /usr), or a "
            "template built with tramontane sandbox template build.",
        ),
    ] = "data",
    max_concurrent_per_workspace: Annotated[
        int,
        typer.Option(
            min=1,
            help="Inference requests a workspace runs at once on this server, unless the workspace has its own "
            "concurrency limit.",
        ),
    ] = AdmissionLimits.max_concurrent,
    max_queued_per_workspace: Annotated[
        int,
        typer.Option(min=0, help="Requests of a workspace waiting for one of its slots; past them, a 429."),
    ] = AdmissionLimits.max_queued,
    max_queue_wait_s: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Longest wait for a workspace slot, and for the engine's first token, before a 429 or 503 "
            "(with Retry-After) rather than a timeout.",
        ),
    ] = AdmissionLimits.max_queue_wait_s,
    workspace_weight: Annotated[
        list[str] | None,
        typer.Option(
            "--workspace-weight",
            metavar="WORKSPACE_ID=WEIGHT",
            help="A workspace's share of the engines relative to others (default 1); repeatable.",
        ),
    ] = None,
    fetch_remote_images: Annotated[
        bool,
        typer.Option(
            help="Fetch http(s) image URLs in chat requests. Off, they are refused with a 400 and images "
            "come as data: URLs or Files API ids (the platform makes no outbound request).",
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="TRAMONTANE_TLS_CERT",
            help="Serve HTTPS with this certificate chain (PEM; a wildcard or one naming the deployments' "
            "custom domains too). Needs --tls-key.",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="TRAMONTANE_TLS_KEY", help="The certificate's private key (PEM).")
    ] = None,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            envvar="TRAMONTANE_ADVERTISE_URL",
            help="Where the other gateways sharing the database reach this one, to relay deployment "
            "requests while it leads the control plane. Default: http://HOST:PORT (this host's name "
            "when HOST is a wildcard address).",
        ),
    ] = None,
    control_lease_s: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Lease of the control plane's leader: when it dies, another gateway takes over within "
            "about this long.",
        ),
    ] = DEFAULT_TTL_S,
    min_idle_before_eviction_s: Annotated[
        float,
        typer.Option(
            min=0.0,
            envvar="TRAMONTANE_MIN_IDLE_BEFORE_EVICTION_S",
            help="When the node (or Ray cluster) is full: how long a running replica must have been idle "
            "before it may be evicted to make room for another deployment's; until then that deployment "
            "gets 503 with Retry-After.",
        ),
    ] = DEFAULT_MIN_IDLE_S,
    sandbox_host: Annotated[
        bool,
        typer.Option(
            help="With a shared PostgreSQL database: also host sandboxes on this machine, registered among "
            "the sandbox hosts (`tramontane node`). Off, this gateway places every sandbox on the others.",
        ),
    ] = True,
    shutdown_grace_s: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="On SIGTERM: how long requests in flight may finish before they are cancelled and the "
            "server stops its replicas and sandboxes and exits.",
        ),
    ] = 30.0,
) -> None:
    """Serve the OpenAI- and Mistral-compatible API, and its admin API."""
    tls = tls_options(tls_cert, tls_key)
    admission = AdmissionLimits(
        max_concurrent=max_concurrent_per_workspace,
        max_queued=max_queued_per_workspace,
        max_queue_wait_s=max_queue_wait_s,
        weights=parse_weights(workspace_weight or []),
    )
    # Before the models: a wrong database fails in a second, not after loading.
    tenancy = open_tenancy(database_url, admission)
    # Set when a control plane started this server as a deployment's replica: it
    # then serves its models only (deployments and sandboxes are the plane's).
    replica_token = os.environ.get(REPLICA_TOKEN_ENV)
    try:
        # Also before the models: an unreachable Ray cluster fails fast too.
        address = advertise_url or advertised_url(host, port, https=bool(tls))
        lease = Lease(tenancy.store, address, ttl_s=control_lease_s)
        plane = None if replica_token is not None else open_control_plane(
            tenancy, backend, ray_address, lease, min_idle_before_eviction_s
        )
        ray_jobs = None
        if replica_token is None and jobs_executor is JobsExecutor.RAY:
            ray_jobs = open_ray_jobs(ray_address, RunResources(cpu=job_cpus, gpus=job_gpus))
        try:
            specs = [ModelSpec.parse(m) for m in model] if model else default_model_specs()
            config = EngineConfig(
                quantization=quantization,
                kv_cache_memory_gb=kv_cache_gb,
                device=device,
                prepared_weights_dir=str(tenancy.home / "prepared"),
                max_queue_wait_s=max_queue_wait_s,
            )
            registry = load_models(specs, config, ImageLimits(allow_remote=fetch_remote_images))
        except (ModelLoadError, ValueError) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
        scheme = "https" if tls else "http"
        url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
        console.print(f"Serving {', '.join(registry.names())} on [bold]{url}[/] (OpenAI base_url: {url}/v1)")
        if plane is None:  # a replica: its logs are readable with a deploy key, so no admin key here
            app = create_app(registry, tenancy, replica_token=replica_token)
        else:
            admin_key = tenancy.bootstrap_admin_key()
            if admin_key is not None:
                print_admin_key(tenancy, admin_key, url, database_url is not None)
            if sandbox_domain:
                # The sandboxes' port names are the platform's: no deployment may claim them.
                plane.domains.reserve(sandbox_domain)
            hosting = tenancy.store.is_sqlite or sandbox_host
            sandboxes = SandboxManager(
                ManagerConfig(
                    max_file_bytes=MAX_BODY_BYTES,
                    microvm_accelerator=microvm_accelerator.value,
                    ports_domain=sandbox_domain,
                    default_template=sandbox_default_template,
                    build_default_template=True,
                    state_dir=str(tenancy.home),  # snapshots under each workspace's folder, erased with it
                    # Not hosting: its manager only runs conversations' code, started on demand.
                    **({} if hosting else {"pool_size": 0, "microvm_pool_size": 0}),
                )
            )
            hosts = None if tenancy.store.is_sqlite else sandbox_hosts(tenancy, sandboxes, address, hosting)
            # Fine-tuned models are served as LoRA adapters on their base model's engine.
            finetune = FineTuning(
                tenancy.store,
                tenancy.home,
                registry.checkpoints(),
                on_model_ready=registry.add_adapter,
                max_file_bytes=MAX_BODY_BYTES,
                ray=ray_jobs,
            )
            # Gateways sharing a PostgreSQL database hand the replicas over when one stops.
            seat = ControlSeat(plane, lease, hands_over=not tenancy.store.is_sqlite)
            app = create_app(
                registry, tenancy, sandboxes=sandboxes, sandbox_hosts=hosts, control_plane=plane,
                control_seat=seat, finetune=finetune,
            )  # fmt: skip
        # SIGTERM: uvicorn stops accepting connections, lets requests in flight run for
        # the grace period, cancels the rest (which aborts their generations), then
        # runs the app's shutdown: replicas, warm-pool sandboxes, engines.
        uvicorn.run(
            app, host=host, port=port, log_level="info", timeout_graceful_shutdown=shutdown_grace_s, **tls
        )
    finally:
        tenancy.close()


def tls_options(cert: Path | None, key: Path | None) -> dict[str, str]:
    """uvicorn's TLS settings, after checking that the pair loads: a wrong file
    fails here, in a second, with its reason, not after the models have loaded."""
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        console.print("[red]error:[/] --tls-cert and --tls-key go together")
        raise typer.Exit(2)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        console.print(f"[red]error:[/] cannot use {cert} and {key} for TLS: {exc}")
        raise typer.Exit(1) from exc
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def advertised_url(host: str, port: int, *, https: bool = False) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"{'https' if https else 'http'}://{'[' + host + ']' if ':' in host else host}:{port}"


def sandbox_hosts(tenancy: Tenancy, manager: SandboxManager, address: str, hosting: bool) -> SandboxHosts:
    """Sandboxes across the hosts registered in the shared database; this gateway
    one of them (named by its address) when `hosting`."""
    directory = HostDirectory(tenancy.store)
    name = urlsplit(address).netloc
    agent = HostAgent(manager, directory, HostSettings(f"gateway-{name}", address)) if hosting else None
    return SandboxHosts(directory, host_token(tenancy.pepper), agent)


def open_control_plane(
    tenancy: Tenancy,
    backend: ReplicaBackend,
    ray_address: str | None,
    lease: Lease,
    min_idle_before_eviction_s: float = DEFAULT_MIN_IDLE_S,
) -> ControlPlane:
    """The control plane this gateway runs while it holds `lease`: its writes are
    fenced by the lease's token, and its replicas' control tokens derive from the
    key pepper the gateways share, so that the next leader can adopt them."""
    shared = {
        "home": tenancy.home,
        "fence": lambda session: lease.fence(session, lease.token),
        "replica_secret": hmac.new(tenancy.pepper, b"replica control tokens", hashlib.sha256).digest(),
        "min_idle_before_eviction_s": min_idle_before_eviction_s,
    }
    if backend is ReplicaBackend.LOCAL:
        return ControlPlane(tenancy.store, **shared)
    try:
        ray_backend = RayBackend(ray_address)
    except (RuntimeError, ConnectionError) as exc:
        console.print(f"[red]error:[/] cannot use the Ray backend: {exc}")
        raise typer.Exit(1) from exc
    capacity = ray_backend.capacity()
    console.print(f"Deployments run on the Ray cluster: {capacity.cpu:g} CPUs, {capacity.gpus} GPUs")
    return ControlPlane(tenancy.store, backend=ray_backend, capacity=capacity, **shared)


def open_ray_jobs(ray_address: str | None, defaults: RunResources) -> RayTraining:
    """The Ray job executor, on the deployments' Ray connection when they run on
    Ray too, else on one of its own to the same cluster."""
    try:
        connect(ray_address)
    except (RuntimeError, ConnectionError) as exc:
        console.print(f"[red]error:[/] cannot use the Ray job executor: {exc}")
        raise typer.Exit(1) from exc
    console.print(f"Fine-tuning jobs train on the Ray cluster ({defaults.describe()} each unless they ask)")
    return RayTraining(defaults)


def parse_weights(specs: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for spec in specs:
        workspace, _, weight = spec.partition("=")
        try:
            weights[workspace] = float(weight)
        except ValueError:
            raise typer.BadParameter(f"{spec!r} is not WORKSPACE_ID=WEIGHT", param_hint="--workspace-weight") from None
        if not workspace or not weights[workspace] > 0:
            raise typer.BadParameter(f"{spec!r}: a workspace id and a positive weight", param_hint="--workspace-weight")
    return weights


@contextmanager
def opening_the_database() -> Iterator[None]:
    """A bad --database-url or a database that cannot be opened: one line, exit 1."""
    try:
        yield
    except ArgumentError as exc:
        # Its message repeats the URL, password included.
        console.print("[red]error:[/] --database-url is not a valid SQLAlchemy URL")
        raise typer.Exit(1) from exc
    except (SQLAlchemyError, ValueError, OSError) as exc:
        console.print(f"[red]error:[/] cannot open the database: {exc}")
        raise typer.Exit(1) from exc


def open_tenancy(database_url: str | None, admission: AdmissionLimits | None = None) -> Tenancy:
    with opening_the_database():
        return Tenancy.open(database_url, admission=admission)


def write_admin_key(home: Path, key: str) -> Path:
    """Writes the key to a new file only its owner can read (created 0600, never
    widened from a looser mode); returns its path."""
    path = home / "admin-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # an earlier database's key: never overwritten
        fd, name = tempfile.mkstemp(prefix="admin-key-", dir=home)
        path = Path(name)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return path


def print_admin_key(tenancy: Tenancy, key: str, url: str, custom_database: bool) -> None:
    """The first start's admin key, on the terminal only: it is never shown again
    and never logged. When the console is not a terminal (a service's log, which
    others may read), the key goes to an owner-only file and only its path is printed."""
    workspace = tenancy.authenticate(f"Bearer {key}").workspace_id
    database = " --database-url ..." if custom_database else ""
    if not console.file.isatty():
        path = write_admin_key(tenancy.home, key)
        console.print(
            f"The admin API key is in {path} (readable by its owner only): move it to your secret store, "
            f"then delete the file. Give clients keys with the inference capability: "
            f"tramontane tenancy keys create --workspace {workspace}{database}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
        return
    console.rule("[bold yellow]Admin API key: shown this once only, store it now")
    console.print(key, soft_wrap=True, highlight=False, markup=False)
    console.print(
        "It administers the platform. Clients need a key with the inference capability:\n"
        f"  tramontane tenancy keys create --workspace {workspace}{database}\n"
        f"or, with the admin key as bearer token, POST {url}/v1/admin/workspaces/{workspace}/keys\n"
        '  {"name": "my-app", "capabilities": ["inference"]}',
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    console.rule()


def load_models(
    specs: list[ModelSpec], engine_config: EngineConfig | None = None, image_limits: ImageLimits | None = None
) -> ModelRegistry:
    registry = ModelRegistry(ImageLoader(image_limits or ImageLimits()))
    columns = (
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn()
    )
    with Progress(*columns, console=console) as progress:
        for spec in specs:
            task = progress.add_task(f"Loading {spec.name or spec.path}", total=None)

            def on_progress(done: int, total: int, task=task) -> None:
                progress.update(task, completed=done, total=total)

            name = registry.load(spec, on_progress, engine_config)
            total = progress.tasks[task].total or 1
            progress.update(task, description=f"Loaded {name}", completed=total, total=total)
    return registry
