"""A model deployment (our engine behind `tramontane up`) through light sleep and
deep sleep, driven by the official OpenAI SDK through the router."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from control_helpers import Env

from tramontane.control.states import ReplicaState
from tramontane.engine.defaults import default_chat_model_path

pytestmark = pytest.mark.slow  # loads the default model (seconds; prepared once per test home)

QUESTION = [{"role": "user", "content": "What is the capital of France? One word."}]


def _sdk(env: Env) -> openai.AsyncOpenAI:
    key = env.client.headers["authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(base_url="http://control/serve/v1", api_key=key, http_client=env.client)


async def _answer(sdk: openai.AsyncOpenAI) -> str:
    reply = await sdk.chat.completions.create(model="smol", messages=QUESTION, max_tokens=8, temperature=0)
    return reply.choices[0].message.content or ""


async def _wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_model_replica_sleeps_and_wakes_answering_the_same(env: Env) -> None:
    spec = {
        "name": "smol",
        "kind": "model",
        "model": default_chat_model_path(),
        "resources": {"cpu": 1, "memory_mb": 2048},
        "health_check": {"type": "http", "path": "/health", "grace_period_s": 120},
        "scaling": {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after_s": 0.5, "light_sleep_s": 3},
    }
    assert (await env.client.post("/v1/deployments", json=spec)).status_code == 201
    sdk = _sdk(env)
    first = await _answer(sdk)
    assert "Paris" in first
    deployment = env.plane.get(env.workspace_id, "smol")
    replica = next(iter(deployment.replicas.values()))
    pid = replica.handle.pid if replica.handle else None

    await _wait_for(lambda: replica.state is ReplicaState.SLEEPING and replica.slept_at is not None)
    # Its sleep and wake routes answer the control plane's token only.
    await replica.handle.resume()
    async with httpx.AsyncClient() as direct:
        refused = await direct.post(f"{replica.url}/control/wake", headers={"authorization": "Bearer nope"})
    await replica.handle.pause()
    assert refused.status_code == 401

    # Woken: the same process, its KV cache back, the same greedy answer.
    assert await _answer(sdk) == first
    assert replica.state is ReplicaState.RUNNING and replica.handle.pid == pid

    # After light_sleep_s asleep, deep sleep: the process is gone; the next request
    # starts a new one (from the prepared model and, when ready, a standby interpreter).
    await _wait_for(lambda: replica.state is ReplicaState.SLEEPING and replica.slept_at is not None)
    await _wait_for(lambda: not deployment.replicas)
    assert await _answer(sdk) == first
    woken = next(iter(deployment.replicas.values()))
    assert woken.handle is not None and woken.handle.pid != pid
