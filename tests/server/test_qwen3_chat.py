"""Qwen3's chat format with the template Qwen ships in its checkpoints
(tests/data/qwen3_chat_template.jinja: the `chat_template` of Qwen/Qwen3-0.6B's
tokenizer_config.json, Apache-2.0), served from a HF folder and driven by the
OpenAI and Mistral SDKs: the prompts we build equal transformers' `apply_chat_template`
of the same conversations (tools, parallel calls, tool results, earlier turns'
thinking), and calls in Qwen3's `<tool_call>` blocks come back as tool_calls,
streamed or not."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from live_app import serve_in_thread
from mistralai.client import Mistral

from tramontane.cli.up import load_models
from tramontane.engine import EngineConfig, load_checkpoint
from tramontane.engine.defaults import default_chat_model_path
from tramontane.inference import ModelSpec
from tramontane.platform.app import create_app
from tramontane.tenancy import Tenancy

transformers = pytest.importorskip("transformers")

TEMPLATE = (Path(__file__).parent.parent / "data" / "qwen3_chat_template.jinja").read_text()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}
CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Nice"}'}},
]
CONVERSATIONS = {
    "system and user": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}], None),
    "tools": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}], [WEATHER]),
    "parallel calls and their results": (
        [
            {"role": "user", "content": "Weather in Paris and Nice?"},
            {"role": "assistant", "content": "", "tool_calls": CALLS},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "21 C, cloudy"},
        ],
        [WEATHER],
    ),
    "earlier thinking dropped": (
        [
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": "<think>\nSmall sum.\n</think>\n\n4"},
            {"role": "user", "content": "And 3 + 3?"},
        ],
        None,
    ),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny random Qwen3 with SmolLM2's vocabulary and Qwen3's template."""
    folder = tmp_path_factory.mktemp("qwen3")
    tokenizer = load_checkpoint(default_chat_model_path()).tokenizer
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        bos_token_id=None, eos_token_id=2, tie_word_embeddings=True,
    )
    transformers.Qwen3ForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.hf_tokenizer.save(str(folder / "tokenizer.json"))
    config = {"chat_template": TEMPLATE, "eos_token": "<|im_end|>", "bos_token": None, "add_bos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def served(folder, tmp_path_factory) -> Iterator[tuple[str, str]]:
    home = tmp_path_factory.mktemp("home")
    registry = load_models([ModelSpec.parse(f"qwen3={folder}")], EngineConfig(kv_cache_memory_gb=0.05, quantization="none"))
    tenancy = Tenancy.open(f"sqlite:///{home / 'db.sqlite'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    with serve_in_thread(create_app(registry, tenancy)) as url:
        headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=f"{url}/v1/admin", headers=headers, timeout=30) as admin:
            workspace = admin.post("/workspaces", json={"name": "qwen"}).raise_for_status().json()["id"]
            body = {"name": "sdk", "capabilities": ["inference"]}
            key = admin.post(f"/workspaces/{workspace}/keys", json=body).raise_for_status().json()["key"]
        yield url, key
    tenancy.close()


def reference_ids(folder: Path, messages: list[dict], tools: list[dict] | None, **template_vars) -> list[int]:
    """transformers' rendering, with the calls' arguments as objects (as its docs ask)."""
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    messages = json.loads(json.dumps(messages))
    for message in messages:
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    text = hf.apply_chat_template(
        messages, tools=tools, chat_template=TEMPLATE, add_generation_prompt=True, tokenize=False, **template_vars
    )
    return hf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_prompt_equals_transformers_with_qwens_template(name, folder, served):
    url, key = served
    messages, tools = CONVERSATIONS[name]
    body = {"model": "qwen3", "messages": messages, **({"tools": tools} if tools else {})}
    reply = httpx.post(f"{url}/v1/tokenize", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["tokens"] == reference_ids(folder, messages, tools)


def test_calls_in_qwens_format_come_back_as_tool_calls(served):
    url, key = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    request = dict(
        model="qwen3",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,  # a random model would go on calling
        max_tokens=60,
        temperature=0,
    )
    reply = client.chat.completions.create(**request)
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    with client.chat.completions.stream(**request) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    # Mistral's SDK reads each tool_calls delta as a whole call, with its name: so it comes.
    with Mistral(api_key=key, server_url=url) as mistral:
        events = list(mistral.chat.stream(**{**request, "tool_choice": "any"}))
    (streamed,) = [c for e in events for c in (e.data.choices[0].delta.tool_calls or [])]
    assert (streamed.function.name, streamed.function.arguments) == ("get_weather", call.function.arguments)
    # The call and its result go back to the model in Qwen3's own format.
    follow_up = [
        *request["messages"],
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"},
    ]
    again = client.chat.completions.create(**{**request, "messages": follow_up, "tool_choice": "none", "max_tokens": 4})
    assert again.choices[0].finish_reason in ("length", "stop")


def test_chat_template_kwargs_turn_qwens_thinking_off(folder, served):
    """vLLM's chat_template_kwargs reach the template: Qwen3's enable_thinking=false
    closes an empty <think> block in the prompt."""
    url, key = served
    messages = [{"role": "user", "content": "Hello!"}]
    want = reference_ids(folder, messages, None, enable_thinking=False)
    assert want != reference_ids(folder, messages, None)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "qwen3", "messages": messages, "chat_template_kwargs": {"enable_thinking": False}}
    assert httpx.post(f"{url}/v1/tokenize", json=body, headers=headers, timeout=30).json()["tokens"] == want
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(
        model="qwen3", messages=messages, max_tokens=1, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert reply.usage.prompt_tokens == len(want)
    # The variables the server sets are not the client's to set.
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(
            model="qwen3", messages=messages, extra_body={"chat_template_kwargs": {"add_generation_prompt": False}}
        )
    assert "add_generation_prompt" in raised.value.response.text
    bad = {**body, "chat_template_kwargs": {"messages": []}}
    refused = httpx.post(f"{url}/v1/tokenize", json=bad, headers=headers, timeout=30)
    assert refused.status_code == 422 and "messages" in refused.text, refused.text
