"""/v1/fim/completions on a model trained for it (a tiny Mistral with Mistral's v3
tokenizer, whose [PREFIX]/[SUFFIX] tokens make it a FIM model): the Mistral SDK's
call works, and the generation stops when its client leaves, streamed or not."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from live_app import serve_in_thread
from mistralai.client import Mistral
from tiny_mistral import hf_model, write_native

from tramontane.cli.up import load_models
from tramontane.engine import EngineConfig
from tramontane.inference import ModelRegistry, ModelSpec
from tramontane.platform.app import create_app
from tramontane.tenancy import Capability, Tenancy

pytest.importorskip("transformers")

MODEL = "tiny-coder"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, str, ModelRegistry]]:
    home = tmp_path_factory.mktemp("home")
    # A long context, so that only the client leaving can end a long generation.
    folder = write_native(hf_model(max_position_embeddings=65536), home / "tiny", tokenizer="v3")
    registry = load_models([ModelSpec.parse(f"{MODEL}={folder}")], EngineConfig(kv_cache_memory_gb=0.1))
    tenancy = Tenancy.open(f"sqlite:///{home / 'db.sqlite'}", home=home)
    _, key = tenancy.create_tenant("coder", frozenset({Capability.INFERENCE}))
    with serve_in_thread(create_app(registry, tenancy)) as url:
        yield url, key, registry
    tenancy.close()


def test_mistral_sdk_fim_complete(served):
    url, key, _ = served
    with Mistral(api_key=key, server_url=url) as client:
        response = client.fim.complete(model=MODEL, prompt="def add(a, b):", suffix="    return c", max_tokens=5)
        assert response.choices[0].finish_reason == "length"
        assert response.usage.completion_tokens == 5
        assert client.models.retrieve(model_id=MODEL).capabilities.completion_fim is True


def _running(registry: ModelRegistry) -> int:
    return registry.chat(MODEL, None).engine.stats().num_running


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_fim_aborts_within_two_seconds_of_the_client_leaving(served, stream):
    url, key, registry = served
    body = json.dumps(
        {"model": MODEL, "prompt": "def f(x):", "suffix": "    return y", "max_tokens": 60000,
         "min_tokens": 60000, "stream": stream}
    ).encode()
    head = (
        f"POST /v1/fim/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 30
        while _running(registry) != 1:
            assert time.monotonic() < deadline, "the FIM request never ran"
            time.sleep(0.02)
        time.sleep(0.3)  # generating, with its client still there
        assert _running(registry) == 1
    left = time.monotonic()
    while _running(registry):
        assert time.monotonic() - left < 2.0, "the generation outlived its client by 2 s"
        time.sleep(0.02)
