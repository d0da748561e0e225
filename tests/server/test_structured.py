"""Grammar-constrained decoding: random logits under a constraint must give valid output."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from tramontane.engine.defaults import default_chat_model_path
from tramontane.engine.errors import EngineError, InvalidRequestError
from tramontane.engine.gguf_file import GGUFFile
from tramontane.engine.tokenizer import Tokenizer
from tramontane.inference.structured import GrammarCompiler
from tramontane.inference.tool_calls import parse_tool_calls

PADDED_VOCAB = 49152 + 64  # the engine's logits may have padding rows past the tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf_metadata(GGUFFile(default_chat_model_path()).metadata)


@pytest.fixture(scope="module")
def compiler(tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer)


@pytest.fixture(scope="module")
def closing_bias(tokenizer) -> np.ndarray:
    """Favours tokens that close strings and containers, so random outputs stay short."""
    bias = np.zeros(PADDED_VOCAB, dtype=np.float32)
    for i, piece in enumerate(tokenizer.all_token_bytes()):
        if any(c in piece for c in (b'"', b"}", b"]")):
            bias[i] = 4.0
    return bias


def test_llguidance_sees_our_token_bytes(compiler, tokenizer):
    ll = compiler.ll_tokenizer
    assert ll.vocab_size == tokenizer.vocab_size
    assert all(ll.decode_bytes([i]) == b for i, b in enumerate(tokenizer.all_token_bytes()))


def _generate(factory, tokenizer, bias, seed: int, max_steps: int = 300) -> tuple[str, list[float]]:
    constraint = factory()
    # numpy rather than torch for the logits: torch's thread pool crawls on a busy 2-core box.
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    mask_times = []
    for _ in range(max_steps):
        start = time.perf_counter()
        allowed = constraint.allowed_tokens(PADDED_VOCAB)
        mask_times.append(time.perf_counter() - start)
        assert allowed.shape == (PADDED_VOCAB,) and allowed.dtype == torch.bool
        assert not allowed[tokenizer.vocab_size :].any()
        logits = rng.standard_normal(PADDED_VOCAB, dtype=np.float32) + bias
        logits[~allowed.numpy()] = -np.inf
        token = int(logits.argmax())  # the logits are random already
        constraint.accept(token)
        if token in tokenizer.eos_token_ids:
            break
        ids.append(token)
        if constraint.is_finished():
            break
    else:
        pytest.fail(f"no end after {max_steps} tokens: {tokenizer.decode(ids)!r}")
    return tokenizer.decode(ids), mask_times


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "hourly": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["city", "unit", "days", "hourly", "tags"],
    "additionalProperties": False,
}


def _check_weather(value: dict) -> None:
    assert set(value) == set(WEATHER["properties"])
    assert isinstance(value["city"], str) and len(value["city"]) <= 12
    assert value["unit"] in ("celsius", "fahrenheit")
    assert type(value["days"]) is int and 1 <= value["days"] <= 14
    assert isinstance(value["hourly"], bool)
    assert len(value["tags"]) <= 3 and all(isinstance(t, str) and len(t) <= 5 for t in value["tags"])


def test_json_schema_output_validates(compiler, tokenizer, closing_bias):
    factory = compiler.constraint_factory(
        {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}
    )
    times = []
    for seed in range(5):
        text, mask_times = _generate(factory, tokenizer, closing_bias, seed)
        times += mask_times
        _check_weather(json.loads(text))
        assert "\n" not in text  # compact single-line style
    per_token_ms = 1000 * sum(times) / len(times)
    print(f"mask: {per_token_ms:.3f} ms/token over {len(times)} tokens")
    assert per_token_ms < 5.0  # typically ~0.05 ms; generous for a loaded CI box


def test_json_object_mode_gives_an_object(compiler, tokenizer, closing_bias):
    factory = compiler.constraint_factory({"type": "json_object"})
    for seed in range(3):
        text, _ = _generate(factory, tokenizer, closing_bias, seed)
        assert isinstance(json.loads(text), dict)


def test_eos_allowed_once_complete(compiler, tokenizer):
    factory = compiler.constraint_factory({"type": "json_object"})
    constraint = factory()
    assert not constraint.allowed_tokens(PADDED_VOCAB)[sorted(tokenizer.eos_token_ids)].any()
    for token in tokenizer.encode('{"a": 1}'):
        constraint.accept(token)
    allowed = constraint.allowed_tokens(PADDED_VOCAB)
    assert allowed[sorted(tokenizer.eos_token_ids)].all()
    assert constraint.is_finished()


def test_each_factory_call_is_independent(compiler, tokenizer):
    factory = compiler.constraint_factory({"type": "json_object"})
    first, second = factory(), factory()
    for token in tokenizer.encode('{"a": 1}'):
        first.accept(token)
    assert first.is_finished() and not second.is_finished()


def test_rejected_token_raises(compiler, tokenizer):
    constraint = compiler.constraint_factory({"type": "json_object"})()
    with pytest.raises(EngineError, match="rejected"):
        constraint.accept(tokenizer.encode("hello")[0])


@pytest.mark.parametrize("response_format", [None, {"type": "text"}])
def test_free_text_needs_no_constraint(compiler, response_format):
    assert compiler.constraint_factory(response_format) is None
    assert compiler.constraint_factory(response_format, [_tool("f", WEATHER)], "auto") is None


@pytest.mark.parametrize(
    ("args", "param"),
    [
        (({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},), "response_format"),
        (
            ({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {"type": "strin"}}},),
            "response_format",
        ),
        (({"type": "json_schema", "json_schema": {"name": "x"}},), "response_format"),
        (({"type": "xml"},), "response_format"),
        ((None, [], "required"), "tool_choice"),
        (
            (None, [{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}], "required"),
            "tools",
        ),
        (
            (None, [{"type": "function", "function": {"name": "f"}}], {"type": "function", "function": {"name": "g"}}),
            "tool_choice",
        ),
        ((None, [{"type": "function", "function": {"name": "f"}}], "sometimes"), "tool_choice"),
    ],
)
def test_bad_requests_raise(compiler, args, param):
    with pytest.raises(InvalidRequestError) as info:
        compiler.constraint_factory(*args)
    assert info.value.param == param


def _tool(name: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": "test", "parameters": parameters}}


TIME = {
    "type": "object",
    "properties": {"tz": {"enum": ["UTC", "CET"]}},
    "required": ["tz"],
    "additionalProperties": False,
}


def test_required_tool_choice_gives_valid_calls(compiler, tokenizer, closing_bias):
    factory = compiler.constraint_factory(None, [_tool("get_weather", WEATHER), _tool("get_time", TIME)], "required")
    for seed in range(4):
        text, _ = _generate(factory, tokenizer, closing_bias, seed)
        content, calls = parse_tool_calls(text)
        assert content is None and calls, text
        for call in calls:
            args = json.loads(call.arguments)
            if call.name == "get_weather":
                _check_weather(args)
            else:
                assert call.name == "get_time" and args["tz"] in ("UTC", "CET")


def test_named_tool_choice_forces_that_function(compiler, tokenizer, closing_bias):
    tools = [_tool("get_weather", WEATHER), _tool("get_time", TIME)]
    factory = compiler.constraint_factory(
        {"type": "json_object"}, tools, {"type": "function", "function": {"name": "get_time"}}
    )
    text, _ = _generate(factory, tokenizer, closing_bias, seed=7)
    _, calls = parse_tool_calls(text)
    assert [c.name for c in calls] == ["get_time"]


def test_tool_parameters_with_defs(compiler, tokenizer, closing_bias):
    parameters = {
        "type": "object",
        "properties": {"where": {"$ref": "#/$defs/Place"}},
        "required": ["where"],
        "$defs": {"Place": {"enum": ["home", "work"]}},
    }
    factory = compiler.constraint_factory(None, [_tool("go", parameters)], "required", parallel_tool_calls=False)
    text, _ = _generate(factory, tokenizer, closing_bias, seed=1)
    _, calls = parse_tool_calls(text)
    assert len(calls) == 1 and json.loads(calls[0].arguments)["where"] in ("home", "work")
