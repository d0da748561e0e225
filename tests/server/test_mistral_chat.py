"""Mistral models' chat prompts and tool calls against mistral-common, Mistral's
own library, on the real tokenizers it ships (and tekken files of the later
versions, v11 to v15, made from them).

The reference side builds each request with mistral-common's own message
classes; our side starts from the OpenAI-shaped JSON an API client sends and
goes through the server's prompt preparation.
"""

import json
from types import SimpleNamespace

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
from mistral_common.tokens.tokenizers.base import SpecialTokens
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from tiny_mistral import MISTRAL_COMMON_DATA

from tramontane.engine import Tokenizer
from tramontane.inference.chat import _render_prompt
from tramontane.inference.mistral_tool_calls import MistralToolCallParser, parse_mistral_tool_calls
from tramontane.inference.protocol import ChatCompletionRequest
from tramontane.inference.structured import GrammarCompiler

SHIPPED = [
    "tokenizer.model.v1",
    "mistral_instruct_tokenizer_240216.model.v2",
    "mistral_instruct_tokenizer_240323.model.v3",
    "mistral_instruct_tokenizer_241114.model.v7",
    "tekken_240718.json",
    "tekken_240911.json",
]
LATER = ["v11", "v13", "v15"]
GRAMMAR_CHECKED = ("240323.model.v3", "tekken_240911.json")

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL_ID = "abc123XYZ"


@pytest.fixture(scope="module", params=SHIPPED + LATER)
def tokenizer_file(request, tmp_path_factory) -> str:
    if request.param in LATER:
        return _later_tekken(request.param, tmp_path_factory.mktemp(request.param))
    return str(MISTRAL_COMMON_DATA / request.param)


@pytest.fixture(scope="module")
def ours(tokenizer_file) -> Tokenizer:
    return Tokenizer.from_mistral_file(tokenizer_file)


@pytest.fixture(scope="module")
def reference(tokenizer_file) -> MistralTokenizer:
    return MistralTokenizer.from_file(tokenizer_file)


def _later_tekken(version: str, folder) -> str:
    """tekken_240911 with the special tokens and version of a later tokenizer."""
    data = json.loads((MISTRAL_COMMON_DATA / "tekken_240911.json").read_text())
    data["config"]["version"] = version
    specials = [{"rank": i, "token_str": t.value, "is_control": True} for i, t in enumerate(SpecialTokens)]
    data["special_tokens"] = specials
    if version == "v15":  # v15 files say which model settings a request may carry: here none
        data["model_settings_builder"] = {}
    path = folder / "tekken.json"
    path.write_text(json.dumps(data))
    return str(path)


def _supports_tools(reference: MistralTokenizer) -> bool:
    return reference.instruct_tokenizer.tokenizer.version.value != "v1"


def _prompt(ours: Tokenizer, body: dict) -> list[int]:
    model = SimpleNamespace(
        name="m",
        engine=SimpleNamespace(tokenizer=ours, model_config=SimpleNamespace(vision=None)),
        tools_in_template=ours.tool_call_format != "hermes",
    )
    request = ChatCompletionRequest.model_validate({"model": "m", **body})
    tools = [t.model_dump(exclude_none=True) for t in request.tools or []]
    return _render_prompt(None, model, request, tools, None)[0]


def _reference(reference: MistralTokenizer, messages: list, tools: list | None = None) -> list[int]:
    return reference.encode_chat_completion(MistralRequest(messages=messages, tools=tools)).tokens


def test_multi_turn_with_system_prompt(ours, reference):
    body = {
        "messages": [
            {"role": "system", "content": "You answer in French."},
            {"role": "user", "content": "Hello there!"},
            {"role": "assistant", "content": "Bonjour !"},
            {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]},
        ]
    }
    want = _reference(
        reference,
        [
            SystemMessage(content="You answer in French."),
            UserMessage(content="Hello there!"),
            AssistantMessage(content="Bonjour !"),
            UserMessage(content="What is 2 + 2?"),
        ],
    )
    assert _prompt(ours, body) == want


def test_tools_tool_calls_and_tool_results(ours, reference):
    if not _supports_tools(reference):
        pytest.skip("v1 has no tool tokens")
    body = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": CALL_ID, "name": "get_weather", "content": '{"temp_c": 21}'},
        ],
        "tools": [{"type": "function", "function": WEATHER}],
    }
    want = _reference(
        reference,
        [
            UserMessage(content="Weather in Paris?"),
            AssistantMessage(
                tool_calls=[
                    ToolCall(id=CALL_ID, function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
                ]
            ),
            ToolMessage(tool_call_id=CALL_ID, name="get_weather", content='{"temp_c": 21}'),
        ],
        [Tool(function=Function(**WEATHER))],
    )
    assert _prompt(ours, body) == want


def test_assistant_prefix_is_continued(ours, reference):
    body = {
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "The colour is", "prefix": True},
        ]
    }
    want = _reference(
        reference, [UserMessage(content="Name a colour."), AssistantMessage(content="The colour is", prefix=True)]
    )
    assert _prompt(ours, body) == want


def test_plain_text_encodes_and_decodes_as_mistral_common(ours, reference):
    raw = reference.instruct_tokenizer.tokenizer
    for text in ["Hello world", " Ça va ? 東京 🙂\n\n  x\ty", "def f(x):\n    return x**2  # 12345", ""]:
        ids = ours.encode(text)
        assert ids == raw.encode(text, bos=False, eos=False)
        assert ours.decode(ids) == raw.decode(ids)
    assert ours.encode("Hi", add_special_tokens=True)[0] == raw.bos_id
    assert ours.eos_token_ids == {raw.eos_id}


def test_tool_calls_written_by_mistral_common_parse_back(ours, reference):
    """mistral-common's own encoding of an assistant's calls, decoded as the engine
    decodes generated tokens, parses into the same calls."""
    if not _supports_tools(reference):
        pytest.skip("v1 has no tool tokens")
    calls = [
        ToolCall(id=CALL_ID, function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}')),
        ToolCall(id="zyx987CBA", function=FunctionCall(name="get_weather", arguments='{"city": "Nantes"}')),
    ]
    tokens = reference.instruct_tokenizer.encode_assistant_message(AssistantMessage(tool_calls=calls), False)
    text = ours.decode(tokens)  # special tokens skipped, the tool-call markers kept
    content, parsed = parse_mistral_tool_calls(text)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Nantes"}),
    ]
    # Streamed a few characters at a time, the same calls come out.
    parser = MistralToolCallParser()
    events = [e for i in range(0, len(text), 3) for e in parser.feed(text[i : i + 3])] + parser.finish()
    assert [(e.name, json.loads(e.arguments)) for e in events] == [(c.name, json.loads(c.arguments)) for c in parsed]


def test_forced_tool_grammar_accepts_the_calls_mistral_common_writes(tokenizer_file, ours, reference):
    """The tool_choice grammar for this tokenizer allows exactly the format the
    model was trained on: mistral-common's encoding of a call is accepted token by token."""
    if ours.mistral.version.value not in ("v11", "v13") and not tokenizer_file.endswith(GRAMMAR_CHECKED):
        pytest.skip("llguidance's view of a vocabulary takes seconds: checked on one tokenizer per format")
    call = ToolCall(id=CALL_ID, function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
    tokens = reference.instruct_tokenizer.encode_assistant_message(AssistantMessage(tool_calls=[call]), False)
    tokens = tokens[:-1]  # the grammar ends the output; the EOS is the engine's
    if ours.tool_call_format == "mistral_json":
        # v2 to v7 name no call ids in the prompt format the grammar writes: drop it.
        text = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
        tokens = [ours.encode("[TOOL_CALLS]")[0], *ours.encode(text)]
    call_id, args = ours.encode("[CALL_ID]"), ours.encode("[ARGS]")
    if len(call_id) == 1 and call_id[0] in tokens:  # v11 writes [CALL_ID]id; the grammar leaves it out
        tokens = tokens[: tokens.index(call_id[0])] + tokens[tokens.index(args[0]) :]
    factory = GrammarCompiler(ours).constraint_factory(None, [{"type": "function", "function": WEATHER}], "required")
    constraint = factory()
    for token in tokens:
        assert bool(constraint.allowed_tokens(ours.vocab_size)[token]), ours.decode([token], skip_special_tokens=False)
        constraint.accept(token)
    assert constraint.is_finished() or bool(constraint.allowed_tokens(ours.vocab_size)[min(ours.eos_token_ids)])


def test_parser_keeps_content_and_unparsable_calls():
    assert parse_mistral_tool_calls("Sure.") == ("Sure.", [])
    content, calls = parse_mistral_tool_calls('Let me check. [TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}]')
    assert content == "Let me check." and calls[0].name == "f" and json.loads(calls[0].arguments) == {"a": 1}
    content, calls = parse_mistral_tool_calls('[TOOL_CALLS]f[CALL_ID]abc123XYZ[ARGS]{"a": [1, 2]}[TOOL_CALLS]g[ARGS]{}')
    assert content is None and [(c.id, c.name, c.arguments) for c in calls] == [
        ("abc123XYZ", "f", '{"a": [1, 2]}'),
        (calls[1].id, "g", "{}"),
    ]
    broken = '[TOOL_CALLS][{"name": "f", "argu'
    assert parse_mistral_tool_calls(broken) == (broken, [])
