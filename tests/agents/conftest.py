"""One live server for the agents tests: the default models, sandboxes, tenancy,
and the scripted model (agents_helpers.py) beside the real ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agents_helpers import SANDBOX_IDLE_S, AgentsServer, ScriptedBackend, Tenant
from live_app import serve_in_thread
from mistralai.client import Mistral

from tramontane.agents.backend import EngineBackend
from tramontane.cli.up import load_models
from tramontane.sandbox import ManagerConfig, SandboxManager
from tramontane.inference import default_model_specs
from tramontane.platform.app import create_app
from tramontane.tenancy import Tenancy


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentsServer]:
    home: Path = tmp_path_factory.mktemp("agents-home")
    tenancy = Tenancy.open(f"sqlite:///{home / 'tramontane.db'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    registry = load_models(default_model_specs())
    sandboxes = SandboxManager(ManagerConfig(pool_size=1, microvm_pool_size=0, max_sandboxes=8))
    backend = ScriptedBackend()
    app = create_app(
        registry, tenancy, sandboxes=sandboxes, agent_backend=backend, agent_sandbox_idle_timeout_s=SANDBOX_IDLE_S
    )
    backend.engine = EngineBackend(registry, app.state.metrics)
    with serve_in_thread(app, stop_timeout_s=30) as url:
        yield AgentsServer(url, registry, tenancy, sandboxes, backend, admin_key)
    tenancy.close()


@pytest.fixture(scope="session")
def tenant(server: AgentsServer) -> Tenant:
    return server.create_tenant("agents-tests")


@pytest.fixture(scope="session")
def stranger(server: AgentsServer) -> Tenant:
    return server.create_tenant("agents-stranger")


@pytest.fixture(scope="session")
def mistral(server: AgentsServer, tenant: Tenant) -> Mistral:
    return server.client(tenant)


@pytest.fixture(scope="session")
def other(server: AgentsServer, stranger: Tenant) -> Mistral:
    return server.client(stranger)


@pytest.fixture
def script(server: AgentsServer) -> Callable[..., None]:
    return server.script
