"""Mistral tool calls in a stream: each call whole in one delta, as soon as it is
complete, as Mistral's API streams them (its clients need a name and an id on
every tool_calls delta), while the model may still write the next one."""

import json

import pytest

from tramontane.inference.mistral_tool_calls import MistralToolCallParser, parse_mistral_tool_calls
from tramontane.inference.tool_calls import ContentDelta, ToolCallDelta

JSON_LIST = (
    'Let me check.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}, '
    '{"name": "get_time", "arguments": {"zone": "CET"}, "id": "zyx987CBA"}]'
)
NAMED = (
    '[TOOL_CALLS]get_weather[CALL_ID]abc123XYZ[ARGS]{"city": "Paris", "days": [1, 2]}'
    '[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}'
)


def stream(text: str, step: int) -> list:
    parser = MistralToolCallParser(stream_calls=True)
    events = [e for i in range(0, len(text), step) for e in parser.feed(text[i : i + step])]
    return events + parser.finish()


def content_and_calls(events: list) -> tuple[str, list[ToolCallDelta]]:
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    return content, [e for e in events if isinstance(e, ToolCallDelta)]


@pytest.mark.parametrize("text", [JSON_LIST, NAMED], ids=["v2-v7 list", "v11 named"])
@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_streamed_calls_are_the_whole_parse(text, step):
    content, calls = content_and_calls(stream(text, step))
    whole_content, whole = parse_mistral_tool_calls(text)
    assert content.strip() == (whole_content or "")
    assert [(c.index, c.name, c.arguments) for c in calls] == [(i, c.name, c.arguments) for i, c in enumerate(whole)]
    # Every delta is a whole call: an id and a name beside all its arguments.
    assert all(len(c.id or "") == 9 and c.id.isalnum() and json.loads(c.arguments) for c in calls)


def test_a_call_comes_as_soon_as_it_is_complete():
    for text, first in ((NAMED, "get_time"), (JSON_LIST, '{"name": "get_time"')):
        parser = MistralToolCallParser(stream_calls=True)
        cut = text.index(first)
        events = parser.feed(text[: cut - 3]) + parser.feed(text[cut - 3 : cut + 4])
        (call,) = [e for e in events if isinstance(e, ToolCallDelta)]
        assert (call.index, call.name, json.loads(call.arguments)) == (0, "get_weather", {"city": "Paris", "days": [1, 2]})
        assert parser.num_calls == 1
        (second,) = parser.feed(text[cut + 4 :]) + parser.finish()
        assert (second.index, second.name, second.arguments) == (1, "get_time", '{"zone": "CET"}')


def test_the_models_call_ids_are_kept():
    _, calls = content_and_calls(stream(NAMED, 2))
    assert calls[0].id == "abc123XYZ" and calls[1].id != "abc123XYZ"
    _, calls = content_and_calls(stream(JSON_LIST, 2))
    assert calls[1].id == "zyx987CBA"


def test_nothing_of_a_half_written_tag_or_call_leaks():
    parser = MistralToolCallParser(stream_calls=True)
    assert parser.feed("Sure. [TOOL") == [ContentDelta("Sure. ")]
    assert parser.feed('_CALLS]get_weather[ARGS]{"city": "Ni') == []
    (call,) = parser.feed('ce"} [TOO')
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Nice"}')
    assert parser.feed("L_CALLS]f") == []
    (last,) = parser.feed("[ARGS]{}") + parser.finish()
    assert (last.index, last.name, last.arguments) == (1, "f", "{}")


def test_what_is_no_complete_call_comes_back_as_content():
    # Never a call: everything the model wrote, marker included.
    assert content_and_calls(stream("[TOOL_CALLS] I cannot call tools.", 4)) == ("[TOOL_CALLS] I cannot call tools.", [])
    # Cut short (max_tokens) in the first call's arguments: as the non-streaming parse returns it.
    cut = '[TOOL_CALLS]get_weather[ARGS]{"city": "Pa'
    assert content_and_calls(stream(cut, 5)) == (cut, []) and parse_mistral_tool_calls(cut) == (cut, [])
    # A complete call, then one cut short: the first is a call, the rest content.
    content, calls = content_and_calls(stream('[TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]g[ARGS]{"b": ', 3))
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"a": 1}')] and content == '[TOOL_CALLS]g[ARGS]{"b":'
    # Double-encoded v2-v7 arguments are decoded, as the non-streaming parse does.
    _, calls = content_and_calls(stream('[TOOL_CALLS][{"name": "f", "arguments": "{\\"a\\": 1}"}]', 4))
    assert calls[0].arguments == '{"a": 1}'


def test_default_parser_emits_the_calls_at_the_end():
    parser = MistralToolCallParser()
    events = [e for i in range(0, len(NAMED), 3) for e in parser.feed(NAMED[i : i + 3])]
    assert events == []
    assert [(e.name, e.arguments) for e in parser.finish()] == [
        ("get_weather", '{"city": "Paris", "days": [1, 2]}'),
        ("get_time", '{"zone": "CET"}'),
    ]
