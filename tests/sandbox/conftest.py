"""One sandbox API server per tier for the whole session: a SandboxManager behind
the sandbox router, in a small FastAPI app served by uvicorn on a free loopback
port. Tests that need one are skipped, with the reason, on a host that cannot
run that tier (tier 1: no bwrap, not root, no cgroups; tier 2: also no QEMU or
no guest image)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sandbox_support import tier1_unavailable_reason
from starlette.requests import HTTPConnection

from tramontane.sandbox import ManagerConfig, Sandbox, SandboxManager, create_router
from tramontane.sandbox.default_template import bundled_spec
from tramontane.sandbox.errors import SandboxError
from tramontane.sandbox.host_routing import PortHostRouting
from tramontane.sandbox.microvm import MicroVMHost
from tramontane.sandbox.templates import Template, TemplateStore
from tramontane.sandbox.templates import load as load_template
from tramontane.sandbox.templates.store import default_root

T = TypeVar("T")


UNAVAILABLE = tier1_unavailable_reason()


@pytest.fixture
def tier1_host() -> None:
    """Skips the test where tier-1 sandboxes cannot run, saying why."""
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)


def _tenant_header(request: HTTPConnection) -> str | None:
    """Tests name a tenant with x-tenant; without it the API is unscoped."""
    return request.headers.get("x-tenant")


@dataclass
class LiveSandboxes:
    url: str
    manager: SandboxManager
    loop: asyncio.AbstractEventLoop

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Runs a coroutine on the server's loop, where the manager lives."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def create(self, **kwargs: Any) -> Sandbox:
        return Sandbox.create(api_url=self.url, **kwargs)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


@contextmanager
def _serve(manager: SandboxManager) -> Iterator[LiveSandboxes]:
    """The manager behind the sandbox API, on a free loopback port, for as long as the block runs."""
    loops: list[asyncio.AbstractEventLoop] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        loops.append(asyncio.get_running_loop())
        await manager.start()
        try:
            yield
        finally:
            await manager.shutdown()

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_router(manager, owner=_tenant_header))
    if manager.config.ports_domain:
        app.add_middleware(PortHostRouting, domain=manager.config.ports_domain)
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited: no delayed-ACK stalls
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the sandbox API server did not start")
        time.sleep(0.02)
    try:
        yield LiveSandboxes(f"http://127.0.0.1:{port}", manager, loops[0])
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture
def serve_sandboxes() -> Callable[[SandboxManager], AbstractContextManager[LiveSandboxes]]:
    """Serves a manager of the test's own for the `with` block (a fixture, not an
    import: another test folder's conftest may be the `conftest` module)."""
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    return _serve


# Built templates outlive the test session: a build costs a minute or two, and the
# content hash makes a stale one impossible to pick up.
TEST_TEMPLATES = Path(os.environ.get("TRAMONTANE_TEST_TEMPLATES", "/var/tmp/tramontane-test-templates"))
SMALL_TEMPLATE_SPEC = Path(__file__).with_name("templates") / "small.toml"


@pytest.fixture(scope="session")
def small_template(live: LiveSandboxes) -> Template:
    """A small real template (minbase, python3, jq, a wheel, files), built once;
    skipped where it cannot be built (no mmdebstrap, no Debian mirror)."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    template, _cached = live.call(live.manager.templates.build(load_template(SMALL_TEMPLATE_SPEC)), timeout=1500)
    return template


def provide_default_template(store: Path) -> str | None:
    """Puts the bundled default template ("data") in the tests' store, before a
    manager starts on it: already there, or hard-linked from the one `make
    install` built into $TRAMONTANE_HOME/templates (a second, no copy). Returns
    why not, if neither: the tests never start a build of their own (minutes, and
    an offline machine would wait on the mirror's timeouts)."""
    spec = bundled_spec("data")
    assert spec is not None
    template_id = spec.content_hash(None)
    if (store / template_id / "template.json").exists():
        return None
    installed = default_root() / template_id
    if not (installed / "template.json").exists():
        return f"the data template is not built in {default_root()} (make install, or: tramontane sandbox template build data)"
    store.mkdir(parents=True, exist_ok=True)
    os.chmod(store, 0o711)
    scratch = store / f".build-link-{secrets.token_hex(4)}"
    linked = subprocess.run(["cp", "-a", "-l", str(installed), str(scratch)], capture_output=True, text=True)
    if linked.returncode != 0:  # another filesystem
        shutil.rmtree(scratch, ignore_errors=True)
        return f"cannot hard-link {installed} into {store}: {linked.stderr.strip()}"
    os.rename(scratch, store / template_id)
    return None


@pytest.fixture(scope="session")
def default_template_missing() -> str | None:
    return UNAVAILABLE or provide_default_template(TEST_TEMPLATES)


@pytest.fixture(scope="session")
def data_template(live: LiveSandboxes, default_template_missing: str | None) -> Template:
    """The default template the `live` manager gives sandboxes that name none;
    skipped where it could not be had."""
    if default_template_missing is not None:
        pytest.skip(default_template_missing)
    template = live.manager.default_template.current()
    assert template is not None and template.name == "data"
    return template


@pytest.fixture(scope="session")
def small_vm_template() -> Template:
    """The small_template, for tier 2 (the same build and store); skipped where
    tier 2 cannot run or the template cannot be built."""
    accelerator, reason = _microvm_accelerator()
    if accelerator is None:
        pytest.skip(reason)
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    template, _ = asyncio.run(TemplateStore(TEST_TEMPLATES).build(load_template(SMALL_TEMPLATE_SPEC)))
    return template


@pytest.fixture
def microvm_config() -> Callable[..., ManagerConfig]:
    """ManagerConfig(...) for a tier-2 manager of the test's own, with no pools and
    the tests' template store; skipped where tier 2 cannot run."""
    accelerator, reason = _microvm_accelerator()
    if accelerator is None:
        pytest.skip(reason)

    def config(**overrides: Any) -> ManagerConfig:
        defaults: dict[str, Any] = {
            "max_sandboxes": 4, "pool_size": 0, "microvm_pool_size": 0, "reap_interval_s": 0.1,
            "templates_dir": str(TEST_TEMPLATES),
            "microvm_accelerator": os.environ.get("TRAMONTANE_MICROVM_ACCEL") or "auto",
        }  # fmt: skip
        return ManagerConfig(**{**defaults, **overrides})

    return config


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, default_template_missing: str | None) -> Iterator[LiveSandboxes]:
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    config = ManagerConfig(
        max_sandboxes=64,
        pool_size=2,
        microvm_pool_size=0,
        reap_interval_s=0.1,
        max_file_bytes=4 * 1024 * 1024,
        egress_private_networks=("127.0.0.0/8",),  # the egress tests' pages listen on the host's loopback
        ports_domain="sandboxes.test",
        templates_dir=str(TEST_TEMPLATES),
        state_dir=str(tmp_path_factory.mktemp("sandbox-state")),
    )
    with _serve(SandboxManager(config)) as served:
        yield served


def _microvm_accelerator() -> tuple[str | None, str]:
    """The accelerator tier-2 tests use, or None and why they cannot run. KVM
    where it can boot the guest; else QEMU's CPU emulation (TCG), which runs the
    same guest and the same checks, minutes instead of seconds (e.g. a cloud VM
    whose /dev/kvm only runs paravirtualized guests). TRAMONTANE_MICROVM_ACCEL
    forces one."""
    if UNAVAILABLE is not None:
        return None, UNAVAILABLE
    forced = os.environ.get("TRAMONTANE_MICROVM_ACCEL")
    reasons = []
    for accelerator in [forced] if forced else ["kvm", "tcg"]:
        try:
            MicroVMHost.detect(accelerator)
        except SandboxError as exc:
            reasons.append(f"{accelerator}: {exc.message}")
            continue
        return accelerator, ""
    return None, "tier-2 sandboxes cannot run here: " + "; ".join(reasons)


@pytest.fixture(scope="session")
def live_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSandboxes]:
    """The API with tier-2 sandboxes (template "microvm") pooled; skipped where the
    host cannot run them (no QEMU, guest image not built). Its default is base, so
    plain "microvm" runs on the host's /usr over 9p (with a built default it would
    run on the default's disk: test_microvm_snapshots.py covers that)."""
    accelerator, reason = _microvm_accelerator()
    if accelerator is None:
        pytest.skip(reason)
    # "auto" unless forced: the same fallback (and warning) an operator gets.
    config = ManagerConfig(
        max_sandboxes=16, pool_size=0, microvm_pool_size=2,
        microvm_accelerator=os.environ.get("TRAMONTANE_MICROVM_ACCEL") or "auto",
        reap_interval_s=0.1, max_file_bytes=4 * 1024 * 1024, default_template="base",
        templates_dir=str(TEST_TEMPLATES), state_dir=str(tmp_path_factory.mktemp("vm-state")),
    )  # fmt: skip
    with _serve(SandboxManager(config)) as served:
        yield served


@pytest.fixture
def sbx(live: LiveSandboxes) -> Iterator[Sandbox]:
    """A fresh sandbox, killed after the test."""
    sandbox = live.create(timeout=120)
    try:
        yield sandbox
    finally:
        sandbox.kill()
        sandbox.close()
