"""Tool calls as Mistral's models write them, after the `[TOOL_CALLS]` token.

Two formats, by tokenizer version (mistral-common encodes past calls the same way):

    v2 to v7:  [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]
    v11 on:    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]other[ARGS]{...}
               (v11 may put [CALL_ID]id between the name and [ARGS])

Text before the first `[TOOL_CALLS]` is the message content and streams as it
comes. By default the calls are emitted once generation ends, and output after
`[TOOL_CALLS]` that does not parse as calls is returned as content, marker
included, so nothing the model wrote is lost. With `stream_calls`, as a chat
stream wants, each call is emitted as soon as its arguments object closes, while
the model may still be writing the next one.

A call is always emitted whole (id, name and all its arguments in one delta), as
Mistral's own API streams them: Mistral's clients (the `mistralai` SDK among them)
require a name and an id on every `tool_calls` delta, and read each delta as a
complete call, so OpenAI-style argument fragments would break them; OpenAI's
clients take a whole call in one delta as well.
"""

from __future__ import annotations

import json
import re

from .tool_calls import ContentDelta, Event, ParsedToolCall, ToolCallDelta, new_tool_call_id

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
_DECODER = json.JSONDecoder()


class MistralToolCallParser:
    """Same interface as tool_calls.ToolCallStreamParser: feed(), finish(), num_calls."""

    def __init__(self, stream_calls: bool = False) -> None:
        self._pending = ""  # content held back: it may be the start of [TOOL_CALLS]
        self._calls: str | None = None  # everything from the first [TOOL_CALLS] on
        self._num_calls = 0
        self._started = False  # leading whitespace of the content is dropped
        self._stream = _CallStream() if stream_calls else None

    @property
    def num_calls(self) -> int:
        return self._stream.num_calls if self._stream is not None else self._num_calls

    def feed(self, delta: str) -> list[Event]:
        if self._calls is not None:
            self._calls += delta
            return self._stream.read(self._calls, final=False) if self._stream is not None else []
        text = self._pending + delta
        start = text.find(TOOL_CALLS)
        if start >= 0:
            self._calls, text = text[start:], text[:start]
            self._pending = ""
            out = self._content(text.rstrip())
            if self._stream is not None:
                out += self._stream.read(self._calls, final=False)
            return out
        keep = _partial_suffix(text, TOOL_CALLS)
        self._pending = text[len(text) - keep :]
        return self._content(text[: len(text) - keep])

    def finish(self) -> list[Event]:
        if self._calls is None:
            out = self._content(self._pending.rstrip())
            self._pending = ""
            return out
        if self._stream is not None:
            out = self._stream.read(self._calls, final=True)
            if self._stream.num_calls == 0:  # not calls after all: the model's text, as it wrote it
                return self._content(self._calls.strip())
            return out + self._content(self._stream.rest)
        calls = parse_calls(self._calls)
        if calls is None:  # not calls after all: the model's text, as it wrote it
            return self._content(self._calls.strip())
        self._num_calls = len(calls)
        return [ToolCallDelta(i, call.arguments, call.id, call.name) for i, call in enumerate(calls)]

    def _content(self, text: str) -> list[Event]:
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        return [ContentDelta(text)] if text else []


class _CallStream:
    """Reads the text from the first [TOOL_CALLS] on as it grows, emitting each call
    once it is complete. From the first text that is no complete call on (a call cut
    short, or not a call), the rest is kept in `rest`: the caller returns it as content."""

    def __init__(self) -> None:
        self.num_calls = 0
        self.rest = ""
        self._done = 0  # offset up to which the text is settled
        self._stopped = False  # met text that is no call: the rest is content
        self._marker: int | None = None  # where the last [TOOL_CALLS] not yet followed by a call began

    def read(self, text: str, final: bool) -> list[Event]:
        out: list[Event] = []
        while not self._stopped and self._done < len(text) and self._step(text, final, out):
            pass
        if final and self._done < len(text):
            # What is no call keeps the marker it came after: the model's text, as it wrote it.
            self.rest = text[self._done if self._marker is None else self._marker :].strip()
            self._done = len(text)
        return out

    def _step(self, text: str, final: bool, out: list[Event]) -> bool:
        """Settles what it can from offset `_done`; False when it needs more text."""
        pos = _skip_ws(text, self._done)
        if text.startswith(TOOL_CALLS, pos):
            self._marker, self._done = pos, pos + len(TOOL_CALLS)
            return True
        if pos >= len(text) or TOOL_CALLS.startswith(text[pos:]):
            return False  # more to come, perhaps the next [TOOL_CALLS]
        if text[pos] in "[,]":  # v2 to v7's list punctuation
            self._done = pos + 1
            return True
        call, end = _json_call(text, pos) if text[pos] == "{" else _named_call(text, pos)
        if call is None:
            # Not a call, or not yet one: only the end of the text, or a next call, says which.
            self._stopped = end is not None or final
            return False
        out.append(ToolCallDelta(self.num_calls, call.arguments, call.id, call.name))
        self.num_calls += 1
        self._done, self._marker = end, None
        return True


def _json_call(text: str, pos: int) -> tuple[ParsedToolCall | None, int | None]:
    """v2 to v7: the {"name": ..., "arguments": {...}} object at `pos` and its end;
    (None, None) while it is unfinished, (None, end) if it is no call."""
    try:
        _, end = _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        return None, None
    calls = _json_calls(text[pos:end])
    return (calls[0], end) if calls else (None, end)


def _named_call(text: str, pos: int) -> tuple[ParsedToolCall | None, int | None]:
    """v11 on: name[CALL_ID]id[ARGS]{...} at `pos` and its end; (None, None) while it
    is unfinished, (None, end) if it is no call (a next [TOOL_CALLS] came first)."""
    nxt = text.find(TOOL_CALLS, pos)
    args = text.find(ARGS, pos)
    if 0 <= nxt and (args < 0 or nxt < args):
        return None, nxt
    if args < 0:
        return None, None
    start = _skip_ws(text, args + len(ARGS))
    try:
        _, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        return None, (nxt if nxt >= 0 else None)
    calls = _named(text[pos:end])
    return (calls[0], end) if calls else (None, end)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def parse_mistral_tool_calls(text: str) -> tuple[str | None, list[ParsedToolCall]]:
    """Content (None when empty) and tool calls of a complete model output."""
    parser = MistralToolCallParser()
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    calls = [
        ParsedToolCall(e.id or new_tool_call_id(), e.name or "", e.arguments)
        for e in events
        if isinstance(e, ToolCallDelta)
    ]
    return content or None, calls


def parse_calls(text: str) -> list[ParsedToolCall] | None:
    """The calls in `text` (which starts with [TOOL_CALLS]); None if it does not parse."""
    segments = [s.strip() for s in text.split(TOOL_CALLS)[1:]]
    segments = [s for s in segments if s]
    if not segments:
        return None
    calls: list[ParsedToolCall] = []
    for segment in segments:
        parsed = _named(segment) if ARGS in segment else _json_calls(segment)
        if parsed is None:
            return None
        calls.extend(parsed)
    return calls or None


def _named(segment: str) -> list[ParsedToolCall] | None:
    """v11 and later: name[CALL_ID]id[ARGS]{...}."""
    head, _, arguments = segment.partition(ARGS)
    name, _, call_id = head.partition(CALL_ID)
    name, arguments = name.strip(), arguments.strip()
    if not name:
        return None
    try:
        value, end = _DECODER.raw_decode(arguments)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or arguments[end:].strip():
        return None
    return [ParsedToolCall(_call_id(call_id.strip()), name, arguments[:end])]


def _json_calls(segment: str) -> list[ParsedToolCall] | None:
    """v2 to v7: a JSON list of {"name", "arguments"} objects (or a single object)."""
    try:
        value, end = _DECODER.raw_decode(segment)
    except json.JSONDecodeError:
        return None
    if segment[end:].strip():
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(ParsedToolCall(_call_id(item.get("id")), item["name"], arguments))
    return calls


def _call_id(value: object) -> str:
    """The model's id if it has Mistral's shape, else a fresh one."""
    return value if isinstance(value, str) and _MISTRAL_ID.fullmatch(value) else new_tool_call_id()


def _partial_suffix(text: str, tag: str) -> int:
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
