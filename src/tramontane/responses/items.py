"""Responses API items: checking a request's input, and turning a transcript of
items into the chat messages a served model reads.

Items are stored as the API shows them (with ids), so that a chained response
(`previous_response_id`) rebuilds its context from its predecessors' stored input
and output items alone.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from ..errors import Invalid

# Items a client may send back that carry nothing a text model can read.
_SKIPPED = {"reasoning"}
_TEXT_PARTS = {"input_text", "output_text", "text", "refusal"}


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _invalid(message: str, index: int) -> Invalid:
    return Invalid(message, param=f"input[{index}]")


def _text(content: Any, index: int) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid("content must be a string or a list of content parts", index)
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            raise _invalid(f"content parts of type '{kind}' are not supported: the served models read text", index)
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise _invalid(f"a '{kind}' part needs a string", index)
        texts.append(text)
    return "".join(texts)


def _message(item: dict[str, Any], index: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise _invalid(f"a message's role must be user, system, developer or assistant, not {role!r}", index)
    part = "output_text" if role == "assistant" else "input_text"
    content: dict[str, Any] = {"type": part, "text": _text(item.get("content"), index)}
    if part == "output_text":
        content["annotations"] = []
    return {
        "type": "message",
        "id": item.get("id") or new_item_id("msg"),
        "role": role,
        "content": [content],
        "status": "completed",
    }


def _string(item: dict[str, Any], key: str, index: int) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _invalid(f"a {item['type']} item needs '{key}' as a string", index)
    return value


def normalize_input(raw: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as stored items, each with an id; 400 for items this
    server cannot read (images, files, hosted tools' calls)."""
    if isinstance(raw, str):
        return [_message({"role": "user", "content": raw}, 0)]
    items = []
    for index, item in enumerate(raw):
        kind = item.get("type", "message")
        if kind in _SKIPPED:
            continue
        if kind == "message":
            items.append(_message(item, index))
        elif kind == "function_call":
            items.append(
                {
                    "type": "function_call",
                    "id": item.get("id") or new_item_id("fc"),
                    "call_id": _string(item, "call_id", index),
                    "name": _string(item, "name", index),
                    "arguments": _string(item, "arguments", index),
                    "status": "completed",
                }
            )
        elif kind == "function_call_output":
            output = item.get("output")
            items.append(
                {
                    "type": "function_call_output",
                    "id": item.get("id") or new_item_id("fco"),
                    "call_id": _string(item, "call_id", index),
                    "output": output if isinstance(output, str) else _text(output, index),
                    "status": "completed",
                }
            )
        else:
            raise _invalid(f"input items of type '{kind}' are not supported", index)
    if not items:
        raise Invalid("input has no item a model can read", param="input")
    return items


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for a transcript of stored items: consecutive function calls
    join one assistant message, as a chat model emitted them."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    names: dict[str, str] = {}
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": "".join(part["text"] for part in item["content"])})
        elif kind == "function_call":
            names[item["call_id"]] = item["name"]
            call = {"id": item["call_id"], "type": "function", "function": _function(item)}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if item["call_id"] not in names:
                raise Invalid(
                    f"No tool call found for function call output with call_id {item['call_id']}", param="input"
                )
            name = names[item["call_id"]]
            messages.append({"role": "tool", "content": item["output"], "tool_call_id": item["call_id"], "name": name})
    return messages


def _function(item: dict[str, Any]) -> dict[str, str]:
    arguments = item["arguments"]
    try:
        json.loads(arguments)
    except ValueError:
        raise Invalid(f"function call {item['call_id']}'s arguments are not JSON", param="input") from None
    return {"name": item["name"], "arguments": arguments}


def output_message(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id or new_item_id("msg"),
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call(call_id: str, name: str, arguments: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id or new_item_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }
