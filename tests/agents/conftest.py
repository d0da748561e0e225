"""One live server for the agents tests: the default models, sandboxes, tenancy,
and a scripted model beside the real ones.

The scripted model ("scripted") is a chat backend like the engine's: the loop
calls it the same way and parses its text with the same tool-call parser, but
its answers follow the test's script, because tool-calling quality is not what
these tests are about. Every other model name goes to the real engine.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from mistralai.client import Mistral

from tramontane.agents.backend import ChatBackend, EngineBackend, ModelTurn
from tramontane.cli.up import load_models
from tramontane.sandbox import ManagerConfig, SandboxManager
from tramontane.server import ModelRegistry, create_app, default_model_specs
from tramontane.server.protocol import ChatCompletionRequest
from tramontane.tenancy import Tenancy

SCRIPTED = "scripted"
SANDBOX_IDLE_S = 3.0


class ScriptedTurn:
    def __init__(self, text: str):
        self._text = text
        self.started = False
        self.prompt_tokens = 10
        self.completion_tokens = 0
        self.num_cached_tokens = 0

    async def start(self) -> None:
        self.started = True

    async def text(self) -> AsyncIterator[str]:
        for start in range(0, len(self._text), 5):  # small pieces, as an engine streams them
            self.completion_tokens += 1
            yield self._text[start : start + 5]

    async def close(self) -> None:
        pass


@dataclass
class ScriptedBackend:
    engine: ChatBackend | None = None  # set once the app (and its metrics) exists
    script: list[str] = field(default_factory=list)
    requests: list[ChatCompletionRequest] = field(default_factory=list)

    def check(self, model: str) -> None:
        if model != SCRIPTED:
            assert self.engine is not None
            self.engine.check(model)

    def turn(self, request: ChatCompletionRequest) -> ModelTurn:
        if request.model != SCRIPTED:
            assert self.engine is not None
            return self.engine.turn(request)
        self.requests.append(request)
        assert self.script, "the scripted model was called more often than the test planned"
        return ScriptedTurn(self.script.pop(0))


@dataclass
class Tenant:
    workspace_id: str
    key: str


@dataclass
class AgentsServer:
    url: str
    registry: ModelRegistry
    tenancy: Tenancy
    sandboxes: SandboxManager
    backend: ScriptedBackend
    admin_key: str

    def create_tenant(self, name: str) -> Tenant:
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        with httpx.Client(base_url=f"{self.url}/v1/admin", headers=headers, timeout=30) as admin:
            workspace = admin.post("/workspaces", json={"name": name})
            workspace.raise_for_status()
            workspace_id = workspace.json()["id"]
            key = admin.post(f"/workspaces/{workspace_id}/keys", json={"name": "t", "capabilities": ["inference"]})
            key.raise_for_status()
        return Tenant(workspace_id, key.json()["key"])

    def client(self, tenant: Tenant) -> Mistral:
        return Mistral(api_key=tenant.key, server_url=self.url)

    def script(self, *texts: str) -> None:
        self.backend.script[:] = list(texts)
        self.backend.requests.clear()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentsServer]:
    home: Path = tmp_path_factory.mktemp("agents-home")
    tenancy = Tenancy.open(f"sqlite:///{home / 'tramontane.db'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    registry = load_models(default_model_specs())
    sandboxes = SandboxManager(ManagerConfig(pool_size=1, max_sandboxes=8))
    backend = ScriptedBackend()
    app = create_app(registry, tenancy, sandboxes=sandboxes, agent_backend=backend,
                     agent_sandbox_idle_timeout_s=SANDBOX_IDLE_S)
    backend.engine = EngineBackend(registry, app.state.metrics)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield AgentsServer(url, registry, tenancy, sandboxes, backend, admin_key)
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
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
