"""Fine-tuned (LoRA) models over HTTP: listed in /v1/models with their base as root,
served by the base model's engine, visible to their own workspace only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import openai
import pytest

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL
from tramontane.errors import NotFound

ADAPTER = f"ft:{CHAT_MODEL}:lora-test:0001"
PROMPT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def owner(live_server):
    return live_server.create_tenant("lora-owner")


@pytest.fixture
def adapter(live_server, owner, make_lora) -> Iterator[str]:
    path = make_lora(live_server.engine.model_config, seed=7)
    # Any event loop will do: the engine answers on the loop that asked.
    registry = live_server.registry
    asyncio.run(registry.add_adapter(ADAPTER, CHAT_MODEL, str(path), job="job-1", workspace_id=owner.workspace_id))
    yield ADAPTER
    with contextlib.suppress(NotFound):  # unless a test deleted it
        asyncio.run(registry.remove_adapter(ADAPTER))


def chat(client: openai.OpenAI, model: str) -> str:
    response = client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=12)
    assert response.model == model
    return response.choices[0].message.content


def test_adapter_is_listed_and_answers(adapter, owner, openai_with_key, mistral_with_key):
    client = openai_with_key(owner.key)
    assert adapter in [m.id for m in client.models.list()]
    cards = {card.id: card for card in mistral_with_key(owner.key).models.list().data}
    card = cards[adapter]
    assert card.type == "fine-tuned" and card.root == CHAT_MODEL and card.job == "job-1"
    assert card.capabilities.completion_chat and cards[CHAT_MODEL].type == "base"
    assert client.models.retrieve(adapter).model_dump()["parent"] == CHAT_MODEL
    tuned, base = chat(client, adapter), chat(client, CHAT_MODEL)
    assert tuned and tuned != base
    assert chat(client, adapter) == tuned  # greedy, whatever ran beside it
    stream = client.chat.completions.create(model=adapter, messages=PROMPT, temperature=0, max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == tuned


def test_other_workspaces_do_not_see_it(adapter, oai):
    assert adapter not in [m.id for m in oai.models.list()]
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve(adapter)
    with pytest.raises(openai.NotFoundError) as err:
        chat(oai, adapter)
    assert err.value.code == "model_not_found"


def test_unknown_adapter_is_404(owner, openai_with_key):
    with pytest.raises(openai.NotFoundError):
        chat(openai_with_key(owner.key), f"ft:{CHAT_MODEL}:lora-test:nope")


def test_delete_fine_tuned_model(live_server, adapter, owner, openai_with_key, mistral_with_key):
    assert mistral_with_key(owner.key).models.delete(model_id=adapter).deleted
    client = openai_with_key(owner.key)
    with pytest.raises(openai.NotFoundError):
        chat(client, adapter)
    assert adapter not in [m.id for m in client.models.list()]
    assert adapter not in live_server.engine.engine.loras.adapters
