"""Conversation entries and stream events, as the Mistral SDK parses them, and the
chat messages a model reads back from a conversation's entries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..inference.images import IMAGE_PARTS
from ..store.types import new_id, utcnow


def _now() -> str:
    return utcnow().isoformat()


def _entry(kind: str, id_prefix: str, **fields: Any) -> dict[str, Any]:
    now = _now()
    return {"object": "entry", "type": kind, "id": new_id(id_prefix), "created_at": now, "completed_at": now, **fields}


def message_input(role: str, content: str | list[dict[str, Any]]) -> dict[str, Any]:
    return _entry("message.input", "msg", role=role, content=content, prefix=False)


def message_output(
    entry_id: str, content: str | list[dict[str, Any]], model: str, agent_id: str | None, *, completed: bool = True
) -> dict[str, Any]:
    """`completed=False`: an answer cut short (its client left), kept as far as it
    got with `completed_at` null, so that nobody reads it as the model's whole answer."""
    entry = _entry("message.output", "msg", role="assistant", content=content, model=model, agent_id=agent_id)
    entry["id"] = entry_id  # the id its stream deltas already carried
    if not completed:
        entry["completed_at"] = None
    return entry


def function_call(
    entry_id: str, tool_call_id: str, name: str, arguments: str, model: str, agent_id: str | None
) -> dict[str, Any]:
    entry = _entry("function.call", "fc", tool_call_id=tool_call_id, name=name, arguments=arguments)
    entry.update(id=entry_id, model=model, agent_id=agent_id)
    return entry


def function_result(tool_call_id: str, result: str) -> dict[str, Any]:
    return _entry("function.result", "fr", tool_call_id=tool_call_id, result=result)


def tool_execution(
    entry_id: str, name: str, arguments: str, info: dict[str, Any], model: str, agent_id: str | None
) -> dict[str, Any]:
    entry = _entry("tool.execution", "tool", name=name, arguments=arguments, info=info, model=model, agent_id=agent_id)
    entry["id"] = entry_id
    return entry


def agent_handoff(entry_id: str, previous: tuple[str, str], following: tuple[str, str]) -> dict[str, Any]:
    entry = _entry(
        "agent.handoff",
        "handoff",
        previous_agent_id=previous[0],
        previous_agent_name=previous[1],
        next_agent_id=following[0],
        next_agent_name=following[1],
    )
    entry["id"] = entry_id
    return entry


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "created_at": _now(), **fields}


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event: the SDK reads the type from `event:` and the body from `data:`."""
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass
class Stored:
    """An entry of a conversation with what only the model sees of it."""

    body: dict[str, Any]
    model_text: str | None = None  # a tool.execution's result as the model read it

    @property
    def type(self) -> str:
        return self.body["type"]


def text_of(content: str | list[dict[str, Any]]) -> str:
    """The text of an entry's content; tool files and references are for the client."""
    if isinstance(content, str):
        return content
    return "".join(chunk.get("text") or "" for chunk in content if chunk.get("type", "text") == "text")


def _input_content(role: str, content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A user input's content for the chat path: its text, or, where it holds images,
    its text and image parts in order (the chat path reads them for a vision model,
    and refuses them, naming the model, for a text-only one)."""
    if role != "user" or isinstance(content, str) or not any(c.get("type") in IMAGE_PARTS for c in content):
        return text_of(content)
    return [
        {"type": "text", "text": c.get("text") or ""} if c.get("type", "text") == "text" else c
        for c in content
        if c.get("type", "text") == "text" or c.get("type") in IMAGE_PARTS
    ]


def to_messages(entries: list[Stored]) -> list[dict[str, Any]]:
    """Chat messages for the model. Calls join the assistant message they follow;
    a server tool's execution is a call plus its result, like a client's function."""
    messages: list[dict[str, Any]] = []

    def call(tool_call_id: str, name: str, arguments: Any) -> None:
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
        last = messages[-1] if messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": ""}
            messages.append(last)
        last.setdefault("tool_calls", []).append(
            {"id": tool_call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )

    for entry in entries:
        body = entry.body
        if entry.type == "message.input":
            messages.append({"role": body["role"], "content": _input_content(body["role"], body["content"])})
        elif entry.type == "message.output":
            messages.append({"role": "assistant", "content": text_of(body["content"])})
        elif entry.type == "function.call":
            call(body["tool_call_id"], body["name"], body["arguments"])
        elif entry.type == "function.result":
            messages.append({"role": "tool", "tool_call_id": body["tool_call_id"], "content": body["result"]})
        elif entry.type == "tool.execution":
            call(body["id"], body["name"], body["arguments"])
            messages.append({"role": "tool", "tool_call_id": body["id"], "content": entry.model_text or ""})
    return messages


def pending_calls(entries: list[Stored]) -> set[str]:
    """Function calls the client has not answered yet."""
    calls = {e.body["tool_call_id"] for e in entries if e.type == "function.call"}
    return calls - {e.body["tool_call_id"] for e in entries if e.type == "function.result"}
