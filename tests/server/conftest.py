"""One real server for the whole session: the default models, loaded the way
`tramontane up` loads them, behind uvicorn on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
import uvicorn
from mistralai.client import Mistral

from tramontane.cli.up import load_models
from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME, DEFAULT_EMBEDDING_MODEL_NAME
from tramontane.server import ModelRegistry, create_app, default_model_specs

CHAT_MODEL = DEFAULT_CHAT_MODEL_NAME
EMBEDDING_MODEL = DEFAULT_EMBEDDING_MODEL_NAME


@dataclass
class LiveServer:
    url: str
    registry: ModelRegistry

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
def live_server() -> Iterator[LiveServer]:
    registry = load_models(default_model_specs())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(registry), log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield LiveServer(f"http://127.0.0.1:{port}", registry)
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="session")
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def oai(live_server: LiveServer) -> openai.OpenAI:
    # No retries: a test that hits a 503 should see it, not wait it out.
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def mistral(live_server: LiveServer) -> Mistral:
    return Mistral(api_key="x", server_url=live_server.url)
