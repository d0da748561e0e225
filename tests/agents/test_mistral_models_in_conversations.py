"""Conversations on Mistral models served from their native folders, driven by the
Mistral SDK: an agent's function calls written in Mistral's `[TOOL_CALLS]` format
come back as function.call entries, and image inputs reach a vision model (and are
refused, naming the model, by a text-only one)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from live_app import serve_in_thread
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from PIL import Image
from tiny_mistral import hf_model, write_native
from tiny_pixtral import hf_vision_model, write_native_vision

from tramontane.cli.up import load_models
from tramontane.engine import EngineConfig
from tramontane.finetune.service import FineTuning
from tramontane.inference import ModelSpec
from tramontane.platform.app import create_app
from tramontane.tenancy import Tenancy

pytest.importorskip("transformers")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def png_data_url(width: int, height: int) -> str:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[Mistral]:
    home = tmp_path_factory.mktemp("home")
    text = write_native(hf_model(tokenizer="tekken"), home / "tiny", tokenizer="tekken")
    vision = write_native_vision(hf_vision_model("llava"), home / "pixtral")
    specs = [ModelSpec.parse(f"tiny-mistral={text}"), ModelSpec.parse(f"tiny-pixtral={vision}")]
    registry = load_models(specs, EngineConfig(kv_cache_memory_gb=0.05, quantization="none"))
    tenancy = Tenancy.open(f"sqlite:///{home / 'db.sqlite'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    finetune = FineTuning(tenancy.store, home, {})  # the Files API, for images named by file id
    with serve_in_thread(create_app(registry, tenancy, finetune=finetune)) as url:
        headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=f"{url}/v1/admin", headers=headers, timeout=30) as admin:
            workspace = admin.post("/workspaces", json={"name": "agents"}).raise_for_status().json()["id"]
            body = {"name": "sdk", "capabilities": ["inference", "fine-tune"]}  # fine-tune: the Files API's
            key = admin.post(f"/workspaces/{workspace}/keys", json=body).raise_for_status().json()["key"]
        with Mistral(api_key=key, server_url=url) as client:
            yield client
    tenancy.close()


def test_an_agents_mistral_format_call_is_a_function_call_entry(client: Mistral) -> None:
    agent = client.beta.agents.create(
        model="tiny-mistral",
        name="weather",
        tools=[WEATHER],
        completion_args={"tool_choice": "any", "max_tokens": 60, "temperature": 0},
    )
    started = client.beta.conversations.start(agent_id=agent.id, inputs="Weather in Paris?")
    # A random model goes on calling (the SDK's completion_args have no parallel_tool_calls).
    calls = [o for o in started.outputs if o.type == "function.call"]
    assert calls and all(c.name == "get_weather" and len(c.tool_call_id) == 9 for c in calls)
    assert all(isinstance(json.loads(c.arguments)["city"], str) for c in calls)
    assert not [o for o in started.outputs if o.type == "message.output" and "[TOOL_CALLS]" in str(o.content)]
    # Streamed, the call arrives whole in its delta.
    with client.beta.conversations.start_stream(agent_id=agent.id, inputs="Weather in Nice?") as stream:
        deltas = [e.data for e in stream if e.event == "function.call.delta"]
    assert deltas and all(d.name == "get_weather" and json.loads(d.arguments) for d in deltas)


def test_image_inputs_reach_a_vision_model(client: Mistral) -> None:
    def prompt_tokens(content) -> int:
        inputs = [{"type": "message.input", "role": "user", "content": content}]
        args = {"max_tokens": 1, "temperature": 0}
        return client.beta.conversations.start(model="tiny-pixtral", inputs=inputs, completion_args=args).usage.prompt_tokens

    text = [{"type": "text", "text": "What is in this picture?"}]
    with_image = [*text, {"type": "image_url", "image_url": png_data_url(64, 32)}]
    # 64 x 32 pixels in 16-pixel patches: 2 rows of 4 [IMG], each row closed by [IMG_BREAK] or [IMG_END].
    assert prompt_tokens(with_image) - prompt_tokens(text) == 2 * (4 + 1)


def test_an_image_to_a_text_only_model_is_a_400_naming_it(client: Mistral) -> None:
    content = [{"type": "text", "text": "And this?"}, {"type": "image_url", "image_url": png_data_url(16, 16)}]
    inputs = [{"type": "message.input", "role": "user", "content": content}]
    with pytest.raises(SDKError) as raised:
        client.beta.conversations.start(model="tiny-mistral", inputs=inputs)
    assert raised.value.status_code == 400 and "tiny-mistral" in raised.value.body


def test_an_uploaded_image_file_is_an_image_input(client: Mistral) -> None:
    """An image uploaded to the Files API is named by its id, in either of the
    Mistral shapes: the same prompt as the image sent inline."""
    png = base64.b64decode(png_data_url(64, 32).split(",", 1)[1])
    uploaded = client.files.upload(file={"file_name": "picture.png", "content": png}, purpose="ocr")

    def prompt_tokens(image) -> int:
        content = [{"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": image}]
        inputs = [{"type": "message.input", "role": "user", "content": content}]
        args = {"max_tokens": 1, "temperature": 0}
        return client.beta.conversations.start(model="tiny-pixtral", inputs=inputs, completion_args=args).usage.prompt_tokens

    inline = prompt_tokens(png_data_url(64, 32))
    assert prompt_tokens(uploaded.id) == inline
    assert prompt_tokens({"url": uploaded.id}) == inline
    with pytest.raises(SDKError) as raised:  # a file of no workspace of the caller's
        prompt_tokens("file-doesnotexist0")
    assert raised.value.status_code == 404
    # The id is kept in the conversation and read again each turn: once deleted, the next turn is a 404.
    content = [{"type": "text", "text": "Describe it"}, {"type": "image_url", "image_url": uploaded.id}]
    started = client.beta.conversations.start(
        model="tiny-pixtral", inputs=[{"type": "message.input", "role": "user", "content": content}],
        completion_args={"max_tokens": 1, "temperature": 0},
    )
    client.files.delete(file_id=uploaded.id)
    with pytest.raises(SDKError) as raised:
        client.beta.conversations.append(conversation_id=started.conversation_id, inputs="And now?")
    assert raised.value.status_code == 404
