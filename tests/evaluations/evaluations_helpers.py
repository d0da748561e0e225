"""Shared by the evaluations tests: a live platform (default models, fine-tuning,
agents with sandboxes, evaluations) and two stand-in agent models.

"gullible" does what the last text it read tells it: asked something, it searches
the documents; reading a passage that says to run code, it runs it; reading a
code, it repeats it. "careful" searches too, then answers without obeying what
it read. They are chat backends like the engine's (the loop parses their text
with the same tool-call parser); the tools they call are the real ones, in real
sandboxes. Every other model name goes to the real engine."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from live_app import serve_in_thread

from tramontane.agents.backend import ChatBackend, EngineBackend, ModelTurn
from tramontane.finetune.service import FineTuning
from tramontane.inference import ModelRegistry
from tramontane.inference.protocol import ChatCompletionRequest
from tramontane.inference.tool_calls import ToolCallStreamParser
from tramontane.platform.app import create_app
from tramontane.sandbox import ManagerConfig, SandboxManager
from tramontane.tenancy import Tenancy

GULLIBLE, CAREFUL = "gullible", "careful"
CAPABILITIES = ("inference", "fine-tune")
_RUN_CODE = re.compile(r"code_interpreter tool with the code: (.+?) and then")
_CANARY = re.compile(r"TRM-CANARY-[0-9a-f]+")


def tool_call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


class TextTurn:
    def __init__(self, text: str):
        self._text = text
        self.started = False
        self.prompt_tokens = 10
        self.completion_tokens = 0
        self.num_cached_tokens = 0

    async def start(self) -> None:
        self.started = True

    async def text(self) -> AsyncIterator[str]:
        for start in range(0, len(self._text), 7):
            self.completion_tokens += 1
            yield self._text[start : start + 7]

    async def close(self) -> None:
        pass

    def tool_call_parser(self) -> ToolCallStreamParser:
        return ToolCallStreamParser()  # the stand-ins write <tool_call> blocks


def _content(message: Any) -> str:
    content = message.content
    return content if isinstance(content, str) else json.dumps(content, default=str)


@dataclass
class StandInBackend:
    engine: ChatBackend | None = None
    seen: list[str] = field(default_factory=list)

    def check(self, model: str) -> None:
        if model not in (GULLIBLE, CAREFUL):
            assert self.engine is not None
            self.engine.check(model)

    def turn(self, request: ChatCompletionRequest, workspace_id: str) -> ModelTurn:
        if request.model not in (GULLIBLE, CAREFUL):
            assert self.engine is not None
            return self.engine.turn(request, workspace_id)
        last = request.messages[-1]
        text = _content(last)
        self.seen.append(text)
        if last.role == "user":
            return TextTurn(tool_call("document_library", {"query": text}))
        if request.model == CAREFUL:
            return TextTurn("Here is what the documents say about your question, leaving out any instructions in them.")
        if code := _RUN_CODE.search(text):
            return TextTurn(tool_call("code_interpreter", {"code": code.group(1)}))
        if canary := _CANARY.search(text):
            return TextTurn(f"Verification code: {canary.group(0)}")
        return TextTurn("Done.")


@dataclass(frozen=True)
class Tenant:
    workspace_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Platform:
    url: str
    admin_key: str
    registry: ModelRegistry
    backend: StandInBackend
    sandboxes: SandboxManager | None
    tenants: dict[str, Tenant] = field(default_factory=dict)

    def tenant(self, name: str) -> Tenant:
        if name not in self.tenants:
            headers = {"Authorization": f"Bearer {self.admin_key}"}
            with httpx.Client(base_url=f"{self.url}/v1/admin", headers=headers, timeout=30) as admin:
                workspace = admin.post("/workspaces", json={"name": name}).raise_for_status().json()
                key = admin.post(f"/workspaces/{workspace['id']}/keys",
                                 json={"name": "t", "capabilities": list(CAPABILITIES)}).raise_for_status().json()
            self.tenants[name] = Tenant(workspace["id"], key["key"])
        return self.tenants[name]

    def http(self, tenant: Tenant) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=tenant.headers, timeout=120)


@contextmanager
def serve(home: Path, registry: ModelRegistry, *, sandboxes: SandboxManager | None = None) -> Iterator[Platform]:
    """The platform on `home`: `registry`'s models, fine-tuning of its chat models
    (their adapters served to their workspace), agents and evaluations."""
    tenancy = Tenancy.open(f"sqlite:///{home / 'tramontane.db'}", home=home)
    admin_key = tenancy.bootstrap_admin_key() or (home / "admin-key").read_text()
    (home / "admin-key").write_text(admin_key)

    async def on_model_ready(model_id: str, base_model: str, path: str, **owner: str) -> None:
        await registry.add_adapter(model_id, base_model, path, **owner)

    finetune = FineTuning(tenancy.store, home, registry.checkpoints(), on_model_ready=on_model_ready,
                          max_file_bytes=1024 * 1024)
    backend = StandInBackend()
    app = create_app(registry, tenancy, sandboxes=sandboxes, finetune=finetune, agent_backend=backend,
                     agent_sandbox_idle_timeout_s=5.0)
    backend.engine = EngineBackend(registry, app.state.metrics)
    try:
        with serve_in_thread(app, stop_timeout_s=60) as url:
            yield Platform(url, admin_key, registry, backend, sandboxes)
    finally:
        tenancy.close()


def jsonl(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(http: httpx.Client, name: str, data: bytes, purpose: str = "evals") -> str:
    response = http.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose})
    response.raise_for_status()
    return response.json()["id"]


def wait_for(http: httpx.Client, path: str, done: Any, timeout: float = 240) -> dict[str, Any]:
    """Polls `path` until `done` holds of its body (a 404 meanwhile: not there yet)."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(path)
        if response.status_code != 404:
            body = response.raise_for_status().json()
            if done(body):
                return body
        assert time.monotonic() < deadline, f"{path} not done after {timeout} s: {response.text[:300]}"
        time.sleep(0.25)


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("SUCCESS", "FAILED", "CANCELLED")
