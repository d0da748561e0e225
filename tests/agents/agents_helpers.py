"""Helpers of the agents tests: the scripted model and the live server's handle.

The scripted model ("scripted") is a chat backend like the engine's: the loop
calls it the same way and parses its text with the same tool-call parser, but
its answers follow the test's script, because tool-calling quality is not what
these tests are about. Every other model name goes to the real engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from mistralai.client import Mistral

from tramontane.agents.backend import ChatBackend, ModelTurn
from tramontane.sandbox import SandboxManager
from tramontane.inference import ModelRegistry
from tramontane.inference.protocol import ChatCompletionRequest
from tramontane.inference.tool_calls import ToolCallStreamParser
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

    def tool_call_parser(self) -> ToolCallStreamParser:
        return ToolCallStreamParser()  # the scripted model writes <tool_call> blocks


@dataclass
class ScriptedBackend:
    engine: ChatBackend | None = None  # set once the app (and its metrics) exists
    script: list[str] = field(default_factory=list)
    requests: list[ChatCompletionRequest] = field(default_factory=list)

    def check(self, model: str) -> None:
        if model != SCRIPTED:
            assert self.engine is not None
            self.engine.check(model)

    def turn(self, request: ChatCompletionRequest, workspace_id: str) -> ModelTurn:
        if request.model != SCRIPTED:
            assert self.engine is not None
            return self.engine.turn(request, workspace_id)
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


