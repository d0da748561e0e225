"""A Mistral folder served as `tramontane up --model NAME=FOLDER` serves it,
driven by the official OpenAI and Mistral SDKs: prompts are mistral-common's,
forced tool calls come back as tool_calls."""

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from live_app import serve_in_thread
from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistralai.client import Mistral
from tiny_mistral import hf_model, write_native

from tramontane.cli.up import load_models
from tramontane.engine import EngineConfig
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
        "strict": True,
    },
}


@pytest.fixture(scope="module", params=["v3", "tekken"])
def served(request, tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    home = tmp_path_factory.mktemp("home")
    folder = write_native(hf_model(tokenizer=request.param), home / "tiny", tokenizer=request.param)
    registry = load_models(
        [ModelSpec.parse(f"tiny-mistral={folder}")], EngineConfig(kv_cache_memory_gb=0.05, quantization="none")
    )
    tenancy = Tenancy.open(f"sqlite:///{home / 'db.sqlite'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    with serve_in_thread(create_app(registry, tenancy)) as url:
        admin = httpx.Client(base_url=f"{url}/v1/admin", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
        with admin:
            workspace = admin.post("/workspaces", json={"name": "mistral"}).raise_for_status().json()["id"]
            body = {"name": "sdk", "capabilities": ["inference"]}
            key = admin.post(f"/workspaces/{workspace}/keys", json=body).raise_for_status().json()["key"]
        yield url, key, str(folder)
    tenancy.close()


def test_prompt_is_mistral_commons(served):
    url, key, folder = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    reply = client.chat.completions.create(model="tiny-mistral", messages=messages, max_tokens=4, temperature=0)
    reference = MistralTokenizer.from_file(_tokenizer_file(folder))
    want = reference.encode_chat_completion(
        MistralRequest(messages=[SystemMessage(content="Be brief."), UserMessage(content="Hello!")])
    ).tokens
    assert reply.usage.prompt_tokens == len(want)
    assert reply.choices[0].finish_reason in ("length", "stop")


def test_forced_tool_call_comes_back_as_tool_calls(served):
    url, key, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    reply = client.chat.completions.create(
        model="tiny-mistral",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,  # a random model would go on calling
        max_tokens=60,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    assert len(call.id) == 9


def test_streamed_tool_call_with_the_mistral_sdk(served):
    url, key, _ = served
    with Mistral(api_key=key, server_url=url) as client:
        events = list(
            client.chat.stream(
                model="tiny-mistral",
                messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=[WEATHER],
                tool_choice="any",
                parallel_tool_calls=False,  # a random model would go on calling
                max_tokens=60,
                temperature=0,
            )
        )
    calls = [c for e in events for c in (e.data.choices[0].delta.tool_calls or [])]
    assert events[-1].data.choices[0].finish_reason == "tool_calls"
    # One delta, the whole call (what Mistral's clients read), before the last chunk.
    (call,) = calls
    assert call.function.name == "get_weather" and len(call.id) == 9
    assert not events[-1].data.choices[0].delta.tool_calls
    assert json.loads(call.function.arguments) == json.loads(_forced_call(url, key).function.arguments)


def test_streamed_tool_call_with_the_openai_sdk_helper(served):
    url, key, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    with client.chat.completions.stream(
        model="tiny-mistral",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    ) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert [(e.name, e.arguments) for e in done] == [("get_weather", call.function.arguments)]
    assert call.function.arguments == _forced_call(url, key).function.arguments


def _forced_call(url: str, key: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    reply = client.chat.completions.create(
        model="tiny-mistral",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    return reply.choices[0].message.tool_calls[0]


def _tokenizer_file(folder: str) -> str:
    from tramontane.engine.mistral_format import tokenizer_file

    return tokenizer_file(folder)


PIXEL = (  # a 1x1 PNG
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_image_to_a_text_only_model_is_a_400_naming_it(served):
    url, key, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    image_parts = [
        {"type": "image_url", "image_url": {"url": PIXEL}},  # OpenAI's shape
        {"type": "image_url", "image_url": PIXEL},  # Mistral's string form
    ]
    for image in image_parts:
        content = [{"type": "text", "text": "What is this?"}, image]
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model="tiny-mistral", messages=[{"role": "user", "content": content}])
        assert "The model 'tiny-mistral' does not accept images" in str(error.value)
    # Nothing was lost: the model still answers.
    reply = client.chat.completions.create(
        model="tiny-mistral", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
    )
    assert reply.choices[0].message is not None
