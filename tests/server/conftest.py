"""One real server for the whole session: the default models, loaded the way
`tramontane up` loads them, behind uvicorn on a free loopback port, with a
tenancy database in a temporary home. Clients use an inference-only key of a
workspace created through the admin API, as a deployment's clients would."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from live_app import serve_in_thread
from mistralai.client import Mistral

from tramontane.cli.up import load_models
from tramontane.control.plane import ControlPlane
from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME, DEFAULT_EMBEDDING_MODEL_NAME
from tramontane.finetune.service import FineTuning
from tramontane.sandbox import ManagerConfig, SandboxManager
from tramontane.inference import ModelRegistry, default_model_specs
from tramontane.platform.app import create_app
from tramontane.tenancy import Tenancy

CHAT_MODEL = DEFAULT_CHAT_MODEL_NAME
EMBEDDING_MODEL = DEFAULT_EMBEDDING_MODEL_NAME


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Tenant:
    """A workspace and one of its keys, made through the admin API."""

    workspace_id: str
    key_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)


@dataclass
class LiveServer:
    url: str
    registry: ModelRegistry
    tenancy: Tenancy
    admin_key: str
    tenant: Tenant = field(init=False)  # the session clients' inference-only key

    def admin(self) -> httpx.Client:
        """A client of the admin API, as the platform's administrator."""
        return httpx.Client(base_url=f"{self.url}/v1/admin", headers=bearer(self.admin_key), timeout=30)

    def create_key(self, workspace_id: str, capabilities: tuple[str, ...] = ("inference",)) -> Tenant:
        with self.admin() as admin:
            body = {"name": "test", "capabilities": capabilities}
            response = admin.post(f"/workspaces/{workspace_id}/keys", json=body)
        response.raise_for_status()
        return Tenant(workspace_id, response.json()["id"], response.json()["key"])

    def create_tenant(self, name: str, capabilities: tuple[str, ...] = ("inference",)) -> Tenant:
        """A new workspace of the platform organisation, with one key."""
        with self.admin() as admin:
            response = admin.post("/workspaces", json={"name": name})
        response.raise_for_status()
        return self.create_key(response.json()["id"], capabilities)

    @property
    def engine(self):
        return self.registry.chat(CHAT_MODEL).engine

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the engine runs and queues nothing (a test's aborted requests drained)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.engine.stats()
            if stats.num_running == 0 and stats.num_waiting == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"engine still busy after {timeout} s: {self.engine.stats()}")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home: Path = tmp_path_factory.mktemp("tramontane-home")
    tenancy = Tenancy.open(f"sqlite:///{home / 'tramontane.db'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    registry = load_models(default_model_specs())
    # The whole platform, as `tramontane up` assembles it.
    sandboxes = SandboxManager(
        ManagerConfig(
            pool_size=1, microvm_pool_size=0, max_sandboxes=8, state_dir=str(home), templates_dir=str(home / "templates"),
            ports_domain="sandboxes.test",
        )
    )
    plane = ControlPlane(tenancy.store, home=home)
    finetune = FineTuning(tenancy.store, home, registry.checkpoints(), on_model_ready=registry.add_adapter)
    app = create_app(registry, tenancy, sandboxes=sandboxes, control_plane=plane, finetune=finetune)
    with serve_in_thread(app, stop_timeout_s=30) as url:
        live = LiveServer(url, registry, tenancy, admin_key)
        live.tenant = live.create_tenant("sdk-tests")
        yield live
    tenancy.close()


@pytest.fixture(scope="session")
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, headers=live_server.tenant.headers, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def openai_with_key(live_server: LiveServer) -> Callable[[str], openai.OpenAI]:
    def make(key: str) -> openai.OpenAI:
        # No retries: a test that hits a 503 or 429 should see it, not wait it out.
        return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=120)

    return make


@pytest.fixture(scope="session")
def mistral_with_key(live_server: LiveServer) -> Callable[[str | None], Mistral]:
    return lambda key: Mistral(api_key=key, server_url=live_server.url)


@pytest.fixture(scope="session")
def oai(live_server: LiveServer, openai_with_key: Callable[[str], openai.OpenAI]) -> openai.OpenAI:
    return openai_with_key(live_server.tenant.key)


@pytest.fixture(scope="session")
def mistral(live_server: LiveServer, mistral_with_key: Callable[[str | None], Mistral]) -> Mistral:
    return mistral_with_key(live_server.tenant.key)
