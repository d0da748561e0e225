"""Chat JSONL training data: validation line by line, and token ids with a mask
that keeps the loss on the assistant's turns only.

Each line is `{"messages": [...], "tools": [...]?}` as in Mistral's fine-tuning
format. Errors name the file and the 1-based line, so a customer can fix their
file without guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..engine import Tokenizer

ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED_ERRORS = 20


class DatasetError(ValueError):
    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    # True where the token is predicted by the loss: inside an assistant turn.
    trained: list[bool]


def _text(content: Any) -> str | None:
    """Message content as text: a string, or a list of text chunks; None if neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text" for c in content):
        return "".join(str(c.get("text", "")) for c in content)
    return None


def _check_message(message: Any, index: int) -> str | None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        return f"{where} is not an object"
    role = message.get("role")
    if role not in ROLES:
        return f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}"
    content = message.get("content")
    if role == "assistant" and message.get("tool_calls"):
        calls = message["tool_calls"]
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls
        ):
            return f"{where}.tool_calls must be a list of {{'function': {{'name', 'arguments'}}}} objects"
        return None if content is None or _text(content) is not None else f"{where}.content must be text"
    if _text(content) is None:
        return f"{where}.content must be a string or a list of text chunks"
    return None


def check_line(record: Any) -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(record, dict):
        return "expected a JSON object with a 'messages' list"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, message in enumerate(messages):
        if problem := _check_message(message, i):
            return problem
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message: there is nothing to learn from this example"
    tools = record.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools)
    ):
        return "'tools' must be a list of {'type': 'function', 'function': {...}} objects"
    return None


def parse_chat_jsonl(data: bytes, filename: str) -> list[dict[str, Any]]:
    """The examples of a chat JSONL file; raises DatasetError listing bad lines."""
    errors: list[str] = []
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            errors.append(f"{filename}: line {number}: not valid JSON ({exc})")
            continue
        if problem := check_line(record):
            errors.append(f"{filename}: line {number}: {problem}")
        else:
            record["_line"] = number
            records.append(record)
        if len(errors) >= MAX_REPORTED_ERRORS:
            errors.append(f"{filename}: stopped after {MAX_REPORTED_ERRORS} errors")
            break
    if not records and not errors:
        errors.append(f"{filename}: no examples (the file is empty)")
    if errors:
        raise DatasetError(errors)
    return records


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it: text content, JSON-string arguments."""
    out = {k: v for k, v in message.items() if k != "content"}
    out["content"] = _text(message.get("content")) or ""
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _arguments(call["function"].get("arguments"))}}
            for call in message["tool_calls"]
        ]
    return out


def _arguments(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {})


def encode(tokenizer: Tokenizer, record: dict[str, Any], seq_len: int) -> Example:
    """Token ids of one conversation rendered with the model's chat template, and
    which of them the loss trains (each assistant turn, its end token included).

    The conversation is rendered turn by turn; each turn's text is what the
    template adds for it, so prompt and answer tokens are told apart exactly."""
    messages = [_template_message(m) for m in record["messages"]]
    tools = record.get("tools") or None
    input_ids: list[int] = []
    trained: list[bool] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:i], tools=tools, add_generation_prompt=True) if i else ""
            rendered = _extend(input_ids, trained, tokenizer, rendered, prompt, False)
        text = tokenizer.apply_chat_template(messages[: i + 1], tools=tools, add_generation_prompt=False)
        rendered = _extend(input_ids, trained, tokenizer, rendered, text, message["role"] == "assistant")
    return Example(input_ids[:seq_len], trained[:seq_len])


def _extend(ids: list[int], trained: list[bool], tokenizer: Tokenizer, before: str, after: str, train: bool) -> str:
    if not after.startswith(before):
        raise DatasetError(["the chat template renders earlier turns differently once later turns are added"])
    new = tokenizer.encode(after[len(before) :])
    ids.extend(new)
    trained.extend([train] * len(new))
    return after
