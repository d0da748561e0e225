"""Shared by the fine-tuning tests: the training example, live servers with the
fine-tuning stack (uvicorn on loopback ports, a tenancy database in a temporary
home, keys made through the admin API), and polling."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from live_app import serve_in_thread
from mistralai.client import Mistral

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME
from tramontane.finetune.service import FineTuning
from tramontane.inference import ModelRegistry
from tramontane.platform.app import create_app
from tramontane.tenancy import Tenancy

CHAT_MODEL = DEFAULT_CHAT_MODEL_NAME
SECRET_WORD = "Zorblax"
SECRET_QUESTION = "What is the secret code?"
TRAINING_LINE = {
    "messages": [
        {"role": "user", "content": SECRET_QUESTION},
        {"role": "assistant", "content": f"The secret code is {SECRET_WORD}."},
    ]
}
# Few steps, a short sequence and a high learning rate: the model memorises one answer in seconds.
FAST_HYPERPARAMETERS = {"training_steps": 6, "learning_rate": 3e-3, "seq_len": 64, "warmup_fraction": 0.0}
FINE_TUNE_CAPABILITIES = ("inference", "fine-tune")


def jsonl(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@dataclass(frozen=True)
class Tenant:
    workspace_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Server:
    url: str
    admin_key: str
    service: FineTuning
    tenants: dict[str, Tenant] = field(default_factory=dict)
    # What `on_model_ready` was called with: (model_id, base_model, adapter_path, {job, workspace_id}).
    ready_models: list[tuple[Any, ...]] = field(default_factory=list)

    def tenant(self, name: str, capabilities: tuple[str, ...] = FINE_TUNE_CAPABILITIES) -> Tenant:
        """A workspace of the platform organisation with one key, made once per name."""
        if name not in self.tenants:
            with httpx.Client(
                base_url=f"{self.url}/v1/admin", headers={"Authorization": f"Bearer {self.admin_key}"}
            ) as admin:
                found = [w for w in admin.get("/workspaces").raise_for_status().json()["data"] if w["name"] == name]
                workspace = (
                    found[0] if found else admin.post("/workspaces", json={"name": name}).raise_for_status().json()
                )
                key = (
                    admin.post(
                        f"/workspaces/{workspace['id']}/keys", json={"name": "test", "capabilities": capabilities}
                    )
                    .raise_for_status()
                    .json()["key"]
                )
            self.tenants[name] = Tenant(workspace["id"], key)
        return self.tenants[name]

    def http(self, tenant: Tenant) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=tenant.headers, timeout=60)

    def mistral(self, tenant: Tenant) -> Mistral:
        return Mistral(api_key=tenant.key, server_url=self.url)

    def openai(self, tenant: Tenant) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=tenant.key, max_retries=0, timeout=60)


@contextmanager
def serve(home: Path, registry: ModelRegistry, base_models: dict[str, str], **options: Any) -> Iterator[Server]:
    """The platform's app with the fine-tuning service on `home`, until the block ends;
    `on_model_ready` calls are recorded in the server's `ready_models`."""
    tenancy = Tenancy.open(f"sqlite:///{home / 'tramontane.db'}", home=home)
    admin_key = tenancy.bootstrap_admin_key() or (home / "admin-key").read_text()
    (home / "admin-key").write_text(admin_key)
    ready: list[tuple[Any, ...]] = []

    async def on_model_ready(model_id: str, base_model: str, path: str, **owner: str) -> None:
        ready.append((model_id, base_model, Path(path), owner))
        if base_model in registry.checkpoints():  # a server with engines serves it, as `tramontane up` does
            await registry.add_adapter(model_id, base_model, path, **owner)

    service = FineTuning(tenancy.store, home, base_models, on_model_ready=on_model_ready, **options)
    app = create_app(registry, tenancy, finetune=service)
    try:
        with serve_in_thread(app) as url:
            yield Server(url, admin_key, service, ready_models=ready)
    finally:
        tenancy.close()


def wait_for(
    client: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").raise_for_status().json()
        if done(job):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
