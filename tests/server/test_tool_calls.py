"""Tool-call prompt rendering and parsing of `<tool_call>` blocks, whole and streamed."""

from __future__ import annotations

import copy
import json
import random
import re

import jinja2
import pytest

from tramontane.inference.tool_calls import (
    ContentDelta,
    ToolCallDelta,
    ToolCallStreamParser,
    new_tool_call_id,
    parse_tool_calls,
    prepare_messages,
    template_handles_tools,
)

WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}\n</tool_call>'
TIME_CALL = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "}</tool_call"}}\n</tool_call>'

TEXTS = [
    WEATHER_CALL,
    "Let me check.\n" + WEATHER_CALL + "\n" + TIME_CALL,
    "Just an answer, no tools.\n",
    "  spaced  <tool_c out\n",
    "<tool_call>\nnot json\n</tool_call> tail",
    '<tool_call>{"name": 5, "arguments": {}}</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>',  # outer brace missing
    '<tool_call>\n{"name": "f", "arguments": {"a": [1, \n</tool_call>',  # arguments broken
    '<tool_call>\n{"arguments": {"x": "y"}, "name": "late"}\n</tool_call>',
    '<tool_call>\n{"name": "s", "arguments": "{\\"q\\": 1}"}\n</tool_call>',
    '<tool_call>\n{"name": "p", "parameters": {"q": 2}}\n</tool_call>',
    '<tool_call>\n{"name": "noargs"}\n</tool_call>',
    'Unclosed at the end: <tool_call>\n{"name": "cut", "arguments": {"a": "b"}}',
    'Cut off mid-call: <tool_call>\n{"name": "cut", "arguments": {"a": "b',
    "<tool_call>\n<tool_call>",
]


def _accumulate(chunks: list[list]) -> tuple[str | None, list[dict]]:
    """Rebuilds a message from per-chunk event lists the way the openai SDK does."""
    content = ""
    calls: dict[int, dict] = {}
    for events in chunks:
        indices = [e.index for e in events if isinstance(e, ToolCallDelta)]
        assert len(indices) == len(set(indices)), "two entries with the same index in one chunk"
        for event in events:
            if isinstance(event, ContentDelta):
                content += event.text
                continue
            entry = event.to_openai()
            if event.index not in calls:
                assert entry["id"] and entry["type"] == "function" and entry["function"]["name"]
                calls[event.index] = {"id": entry["id"], "name": entry["function"]["name"], "arguments": ""}
            else:
                assert "id" not in entry and "name" not in entry["function"]
            calls[event.index]["arguments"] += entry["function"]["arguments"]
    assert sorted(calls) == list(range(len(calls)))
    return content or None, [calls[i] for i in sorted(calls)]


def _stream(text: str, rng: random.Random) -> tuple[str | None, list[dict]]:
    parser = ToolCallStreamParser()
    chunks, pos = [], 0
    while pos < len(text):
        size = rng.randint(1, 6)
        chunks.append(parser.feed(text[pos : pos + size]))
        pos += size
    chunks.append(parser.finish())
    return _accumulate(chunks)


def test_single_call():
    content, calls = parse_tool_calls(WEATHER_CALL)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "days": [1, 2]})]
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", calls[0].id)
    assert calls[0].to_openai()["type"] == "function"


def test_parallel_calls_with_content():
    content, calls = parse_tool_calls("Let me check.\n" + WEATHER_CALL + "\n" + TIME_CALL)
    assert content == "Let me check."
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].arguments) == {"tz": "}</tool_call"}  # tag text inside a JSON string
    assert calls[0].id != calls[1].id


def test_no_calls():
    assert parse_tool_calls("Just an answer.\n") == ("Just an answer.", [])
    assert parse_tool_calls("  \n") == (None, [])


@pytest.mark.parametrize("text", ["<tool_call>\nnot json\n</tool_call>", '<tool_call>{"name": 5}</tool_call>'])
def test_malformed_blocks_stay_content(text):
    assert parse_tool_calls(text + " after") == (text + " after", [])


def test_lenient_shapes():
    assert [(c.name, c.arguments) for c in parse_tool_calls(TEXTS[6])[1]] == [("f", '{"a": 1}')]
    assert [(c.name, c.arguments) for c in parse_tool_calls(TEXTS[8])[1]] == [("late", '{"x": "y"}')]
    assert [(c.name, c.arguments) for c in parse_tool_calls(TEXTS[9])[1]] == [("s", '{"q": 1}')]
    assert [(c.name, c.arguments) for c in parse_tool_calls(TEXTS[10])[1]] == [("p", '{"q": 2}')]
    assert [(c.name, c.arguments) for c in parse_tool_calls(TEXTS[11])[1]] == [("noargs", "{}")]
    content, calls = parse_tool_calls(TEXTS[12])
    assert content == "Unclosed at the end:" and calls[0].arguments == '{"a": "b"}'


@pytest.mark.parametrize("text", TEXTS)
def test_stream_matches_full_parse(text):
    content, calls = parse_tool_calls(text)
    expected = (content, [{"name": c.name, "arguments": c.arguments} for c in calls])
    rng = random.Random(text)
    for _ in range(20):
        got_content, got_calls = _stream(text, rng)
        assert (got_content, [{k: c[k] for k in ("name", "arguments")} for c in got_calls]) == expected


@pytest.mark.parametrize("text", TEXTS)
def test_whole_calls_stream_each_call_in_one_delta(text):
    """What a chat completion stream sends: one delta per call, with its id, name and
    all its arguments (Mistral's clients read each delta as a whole call)."""
    content, calls = parse_tool_calls(text)
    rng = random.Random(text)
    parser = ToolCallStreamParser(whole_calls=True)
    events, pos = [], 0
    while pos < len(text):
        size = rng.randint(1, 6)
        events += parser.feed(text[pos : pos + size])
        pos += size
    events += parser.finish()
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert all(d.id is not None and d.name for d in deltas)
    assert [(d.index, d.name, d.arguments) for d in deltas] == [(i, c.name, c.arguments) for i, c in enumerate(calls)]
    assert ("".join(e.text for e in events if isinstance(e, ContentDelta)) or None) == content


def test_whole_calls_come_as_each_block_closes():
    parser = ToolCallStreamParser(whole_calls=True)
    assert parser.feed('Hi <tool_call>\n{"name": "f", "arguments": {"a": "lo') == [ContentDelta("Hi")]
    (call,) = parser.feed('ng"}}\n</tool_call>\n<tool_call>\n{"name": "g"')
    assert (call.index, call.name, call.arguments) == (0, "f", '{"a": "long"}')
    (second,) = parser.feed(', "arguments": {}}\n</tool_call>') + parser.finish()
    assert (second.index, second.name, second.arguments) == (1, "g", "{}")


def test_stream_is_incremental():
    parser = ToolCallStreamParser()
    assert parser.feed("Hello <tool") == [ContentDelta("Hello")]
    assert parser.feed('_call>\n{"name": "f", "argum') == []
    (header,) = parser.feed('ents": {"a": "lo')
    assert header.index == 0 and header.name == "f" and header.id and header.arguments == '{"a": "lo'
    assert parser.feed('ng"}') == [ToolCallDelta(0, arguments='ng"}')]
    assert parser.feed("}\n</tool_call>") == []
    assert parser.finish() == []
    assert parser.num_calls == 1


def test_ids_are_mistral_compatible():
    ids = {new_tool_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"[a-zA-Z0-9]{9}", i) for i in ids)


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOOL_AWARE = "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}" + CHATML


class _Templater:
    def __init__(self, source: str) -> None:
        self._template = jinja2.Environment().from_string(source)

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True) -> str:
        return self._template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)


def test_template_detection():
    assert not template_handles_tools(_Templater(CHATML))
    assert template_handles_tools(_Templater(TOOL_AWARE))


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
HISTORY = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "abcdefghi",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "bcdefghij",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "abcdefghi", "content": "18C"},
    {"role": "tool", "tool_call_id": "bcdefghij", "content": [{"type": "text", "text": "21C"}]},
]


def test_prepare_messages_for_tool_unaware_template():
    original = copy.deepcopy(HISTORY)
    out = prepare_messages(HISTORY, TOOLS, template_handles_tools=False)
    assert HISTORY == original
    assert out[0]["role"] == "system" and '"get_weather"' in out[0]["content"] and "<tool_call>" in out[0]["content"]
    assistant = out[2]
    assert "tool_calls" not in assistant
    _, calls = parse_tool_calls(assistant["content"])  # rendered calls read back as the same calls
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert out[3] == {
        "role": "user",
        "content": "<tool_response>\n18C\n</tool_response>\n<tool_response>\n21C\n</tool_response>",
    }
    assert len(out) == 4
    rendered = _Templater(CHATML).apply_chat_template(out)
    assert rendered.startswith("<|im_start|>system\n# Tools")


def test_prepare_messages_extends_system_and_keeps_aware_templates():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    out = prepare_messages(messages, TOOLS, template_handles_tools=False)
    assert out[0]["content"].startswith("Be brief.\n\n# Tools") and out[1] == messages[1]
    assert prepare_messages(messages, None, template_handles_tools=False) == messages
    assert prepare_messages(HISTORY, TOOLS, template_handles_tools=True) == HISTORY


def test_default_model_template_gets_tools_injected():
    from tramontane.engine.defaults import default_chat_model_path
    from tramontane.engine.gguf_file import GGUFFile
    from tramontane.engine.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf_metadata(GGUFFile(default_chat_model_path()).metadata)
    assert not template_handles_tools(tokenizer)
    prompt = tokenizer.apply_chat_template(prepare_messages(HISTORY, TOOLS, template_handles_tools=False))
    assert prompt.startswith("<|im_start|>system\n# Tools") and "<tool_response>\n21C" in prompt
