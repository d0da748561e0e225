"""Tool calls written as plain text by models whose chat template knows no tools.

Convention (the Hermes/Qwen style, which many open models were trained on): each
call is one JSON object between tags, several blocks in a row are parallel calls:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Text outside the blocks is the message content. Tool results go back to the model
as `<tool_response>` blocks in a user turn (see `prepare_messages`).

A block is a tool call once its `"name"` string is known (while streaming: once
its `"arguments"` object has begun, too). Its arguments are the model's own text
for that value, so streamed fragments add up to exactly what the whole-text parse
returns, even if the model breaks the JSON later (OpenAI promises no validity
either). Blocks whose name never parses stay in the content, tags included.
`parse_tool_calls` runs the streaming parser over the whole text, so both agree.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any, Protocol

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# Between the tags and around the JSON; the grammar in structured.py emits these.
TOOL_CALL_PREFIX = TOOL_CALL_OPEN + "\n"
TOOL_CALL_SUFFIX = "\n" + TOOL_CALL_CLOSE
TOOL_CALL_SEPARATOR = "\n"

_ARGUMENT_KEYS = ("arguments", "parameters")  # the latter is what Llama-style models write
_ID_ALPHABET = string.ascii_letters + string.digits
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
_WS_RUN = re.compile(r"[ \t\n\r]*")


def new_tool_call_id() -> str:
    """Nine alphanumeric characters: Mistral's required format, also fine for OpenAI."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


@dataclass(frozen=True)
class ParsedToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI's `function.arguments`

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """One `choices[].delta.tool_calls[]` entry: `id` and `name` only on a call's first."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        function = {"name": self.name, "arguments": self.arguments}
        return {"index": self.index, "id": self.id, "type": "function", "function": function}


Event = ContentDelta | ToolCallDelta


class ChatTemplater(Protocol):
    def apply_chat_template(
        self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True
    ) -> str: ...


_PROBE_NAME = "tramontane_template_probe"


def template_handles_tools(tokenizer: ChatTemplater) -> bool:
    """Whether the chat template renders `tools` itself (call once per model).

    Rendering a probe tool beats inspecting the template source: a template may
    accept a `tools` variable and still drop it on some paths.
    """
    probe = {"type": "function", "function": {"name": _PROBE_NAME, "parameters": {"type": "object"}}}
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=[probe])
    except Exception:  # a template that chokes on tools certainly does not handle them
        return False
    return _PROBE_NAME in rendered


def render_tools_prompt(tools: list[dict]) -> str:
    """Instructions plus signatures, for the system message of a tool-unaware template."""
    signatures = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\n"
        "You can call the functions whose JSON signatures are listed here:\n"
        f"<tools>\n{signatures}\n</tools>\n\n"
        "To call one, answer with a JSON object holding the function name and its "
        f"arguments between {TOOL_CALL_OPEN} and {TOOL_CALL_CLOSE} tags:\n"
        f'{TOOL_CALL_PREFIX}{{"name": "<function name>", "arguments": {{<arguments object>}}}}'
        f"{TOOL_CALL_SUFFIX}\n"
        "Write one block per call; several blocks in a row make several calls. "
        "Results come back between <tool_response> and </tool_response> tags."
    )


def _text(content: Any) -> str:
    """Message content as text: OpenAI allows a list of parts instead of a string."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


def _render_assistant(message: dict) -> str:
    blocks = []
    for call in message["tool_calls"]:
        function = call.get("function", {})
        raw = function.get("arguments", "{}")
        try:
            # Show the model the exact shape it is asked to produce: an object, not a string.
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            arguments = raw
        call_json = json.dumps({"name": function.get("name", ""), "arguments": arguments}, ensure_ascii=False)
        blocks.append(TOOL_CALL_PREFIX + call_json + TOOL_CALL_SUFFIX)
    content = _text(message.get("content")).strip()
    return "\n".join(([content] if content else []) + blocks)


def prepare_messages(messages: list[dict], tools: list[dict] | None, template_handles_tools: bool) -> list[dict]:
    """Messages a tool-unaware template can render; the input list is not modified.

    Assistant tool calls become `<tool_call>` blocks; runs of `tool` messages merge
    into one user turn of `<tool_response>` blocks, since templates that insist on
    alternating user/assistant turns reject unknown roles. Pass `tools=None` when
    tool_choice is "none" so the model is not told about them.
    """
    if template_handles_tools:
        return list(messages)
    out: list[dict] = []
    tool_turn: dict | None = None
    for message in messages:
        role = message.get("role")
        if role == "tool":
            block = f"<tool_response>\n{_text(message.get('content'))}\n</tool_response>"
            if tool_turn is not None and out[-1] is tool_turn:
                tool_turn["content"] += "\n" + block
            else:
                tool_turn = {"role": "user", "content": block}
                out.append(tool_turn)
        elif role == "assistant" and message.get("tool_calls"):
            rest = {k: v for k, v in message.items() if k != "tool_calls"}
            out.append({**rest, "content": _render_assistant(message)})
        else:
            out.append(message)
    if tools:
        prompt = render_tools_prompt(tools)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": _text(out[0].get("content")) + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _skip_ws(text: str, pos: int) -> int:
    return _WS_RUN.match(text, pos).end()  # type: ignore[union-attr]  # `*` always matches


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


@dataclass
class _Members:
    """What a (possibly unfinished) call object says so far."""

    name: str | None = None
    args_start: int | None = None  # offset of the arguments value in the block text
    args_end: int | None = None  # set once that value is complete
    args_value: Any = None


def _scan_call(text: str) -> _Members:
    """Walks the top-level members of the call object as far as they are complete.

    Values are delegated to the json module; this only steps between them, which
    is what lets a half-written object report its name and where its arguments start.
    """
    found = _Members()
    pos = _skip_ws(text, 0)
    if not text.startswith("{", pos):
        return found
    pos += 1
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text) or text[pos] == "}":
            return found
        if text[pos] == ",":
            pos += 1
            continue
        try:
            key, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            return found
        pos = _skip_ws(text, pos)
        if not isinstance(key, str) or not text.startswith(":", pos):
            return found
        start = pos = _skip_ws(text, pos + 1)
        if start >= len(text):
            return found
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            value, end = None, None
        if key == "name" and found.name is None and isinstance(value, str):
            found.name = value
        elif key in _ARGUMENT_KEYS and found.args_start is None:
            found.args_start, found.args_end, found.args_value = start, end, value
        if end is None:
            return found
        pos = end


class _Block:
    """One `<tool_call>` block being read; becomes call number `index` once committed."""

    def __init__(self) -> None:
        self.index: int | None = None
        self.sent = 0  # offset in the block text up to which arguments were emitted

    def update(self, text: str, next_index: int, out: list[Event]) -> None:
        """Streams what can safely be said about the unfinished block."""
        found = _scan_call(text)
        if self.index is None:
            # Only an object value can be streamed before it ends (a number could grow).
            if found.name is None or found.args_start is None or text[found.args_start] != "{":
                return
            self.index = next_index
            self.sent = found.args_start
            out.append(ToolCallDelta(self.index, id=new_tool_call_id(), name=found.name))
        self._send_arguments(text, found, out)

    def close(self, text: str, next_index: int, out: list[Event]) -> bool:
        """Emits the rest of the call; False if the block turned out not to be one."""
        found = _scan_call(text)
        if self.index is not None:
            self._send_arguments(text, found, out)
            return True
        if found.name is None:
            return False
        self.index = next_index
        out.append(ToolCallDelta(self.index, _whole_arguments(text, found), new_tool_call_id(), found.name))
        return True

    def _send_arguments(self, text: str, found: _Members, out: list[Event]) -> None:
        assert self.index is not None and found.args_start is not None  # committed blocks have both
        # Trailing whitespace is held back: it may turn out to follow the value.
        end = found.args_end if found.args_end is not None else len(text.rstrip(_WHITESPACE))
        if end > self.sent:
            out.append(ToolCallDelta(self.index, arguments=text[self.sent : end]))
            self.sent = end


def _whole_arguments(text: str, found: _Members) -> str:
    if found.args_start is None:
        return "{}"
    if found.args_end is None:
        return text[found.args_start :].rstrip(_WHITESPACE)
    if isinstance(found.args_value, str):  # some models double-encode the arguments
        return found.args_value
    return text[found.args_start : found.args_end]


class _ContentTrimmer:
    """Emits content with leading and trailing whitespace of the whole message dropped."""

    def __init__(self) -> None:
        self._started = False
        self._pending = ""  # whitespace that is only emitted if more content follows

    def add(self, text: str, out: list[Event]) -> None:
        if not self._started:
            text = text.lstrip(_WHITESPACE)
            if not text:
                return
            self._started = True
        text = self._pending + text
        body = text.rstrip(_WHITESPACE)
        self._pending = text[len(body) :]
        if body:
            out.append(ContentDelta(body))


class ToolCallStreamParser:
    """Splits streamed model text into content deltas and OpenAI-style tool-call deltas.

    Each list returned by `feed`/`finish` holds at most one entry per tool-call
    index, so it can become one chunk's `delta.tool_calls`. With `whole_calls`, a
    call is emitted in one delta once its block closes (or the text ends), as
    Mistral's clients need (see mistral_tool_calls.py); otherwise its arguments
    stream in fragments, OpenAI's way.
    """

    def __init__(self, whole_calls: bool = False) -> None:
        self._buf = ""  # text not yet settled: a possible partial tag, or the open block
        self._block: _Block | None = None
        self._num_calls = 0
        self._content = _ContentTrimmer()
        self._whole = whole_calls

    @property
    def num_calls(self) -> int:
        return self._num_calls

    def feed(self, delta: str) -> list[Event]:
        out: list[Event] = []
        self._buf += delta
        self._drain(out, final=False)
        return _coalesce(out)

    def finish(self) -> list[Event]:
        """Settles held-back text at the end of generation (an unclosed block included)."""
        out: list[Event] = []
        self._drain(out, final=True)
        return _coalesce(out)

    def _drain(self, out: list[Event], final: bool) -> None:
        while True:
            if self._block is None:
                start = self._buf.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = 0 if final else _partial_suffix(self._buf, TOOL_CALL_OPEN)
                    self._content.add(self._buf[: len(self._buf) - keep], out)
                    self._buf = self._buf[len(self._buf) - keep :]
                    return
                self._content.add(self._buf[:start], out)
                self._buf = self._buf[start + len(TOOL_CALL_OPEN) :]
                self._block = _Block()
            end = self._buf.find(TOOL_CALL_CLOSE)
            if end < 0 and not final:
                if not self._whole:
                    visible = len(self._buf) - _partial_suffix(self._buf, TOOL_CALL_CLOSE)
                    self._block.update(self._buf[:visible], self._num_calls, out)
                return
            closed = end >= 0
            body = self._buf[:end] if closed else self._buf
            if self._block.close(body, self._num_calls, out):
                self._num_calls += 1
            else:
                self._content.add(TOOL_CALL_OPEN + body + (TOOL_CALL_CLOSE if closed else ""), out)
            self._buf = self._buf[end + len(TOOL_CALL_CLOSE) :] if closed else ""
            self._block = None


def _coalesce(events: list[Event]) -> list[Event]:
    """Merges neighbours of the same kind (and the same call), keeping order."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, ContentDelta) and isinstance(last, ContentDelta):
            merged[-1] = ContentDelta(last.text + event.text)
        elif isinstance(event, ToolCallDelta) and isinstance(last, ToolCallDelta) and last.index == event.index:
            merged[-1] = ToolCallDelta(last.index, last.arguments + event.arguments, last.id, last.name)
        else:
            merged.append(event)
    return merged


def parse_tool_calls(text: str) -> tuple[str | None, list[ParsedToolCall]]:
    """Content (None when empty) and tool calls of a complete model output."""
    parser = ToolCallStreamParser()
    content: list[str] = []
    calls: list[dict[str, str]] = []
    for event in parser.feed(text) + parser.finish():
        if isinstance(event, ContentDelta):
            content.append(event.text)
        elif event.id is not None:
            calls.append({"id": event.id, "name": event.name or "", "arguments": event.arguments})
        else:
            calls[event.index]["arguments"] += event.arguments
    return "".join(content) or None, [ParsedToolCall(**call) for call in calls]
