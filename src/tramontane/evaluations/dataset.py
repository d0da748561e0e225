"""Evaluation datasets: one JSON object a line, `messages` (or `input`, one user
message) with an optional `reference` and `metadata`. Every line is checked
before a job starts; the error names each bad line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import Invalid

ROLES = ("system", "user", "assistant")
MAX_ITEMS = 10_000
MAX_ERRORS_SHOWN = 20


@dataclass(frozen=True)
class Item:
    index: int  # 0-based position among the dataset's items
    line: int  # 1-based line of the file
    messages: list[dict[str, str]]
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _messages(record: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise ValueError(f"each message needs a role among {', '.join(ROLES)}")
            if not isinstance(message.get("content"), str):
                raise ValueError("each message needs a string 'content'")
        # A trailing assistant message is the reference, as in fine-tuning files.
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("the input must end with a user message")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if isinstance(record.get("input"), str) and record["input"].strip():
        return [{"role": "user", "content": record["input"]}]
    raise ValueError("missing its input: give 'messages' or 'input'")


def _reference(record: dict[str, Any]) -> str | None:
    reference = record.get("reference")
    if reference is None and isinstance(record.get("messages"), list) and record["messages"]:
        last = record["messages"][-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            reference = last.get("content")
    if reference is not None and not isinstance(reference, str):
        raise ValueError("'reference' must be a string")
    return reference


def parse(data: bytes, filename: str) -> list[Item]:
    """The items of a dataset file; raises Invalid listing every bad line."""
    items: list[Item] = []
    errors: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise ValueError("expected a JSON object")
            metadata = record.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise ValueError("'metadata' must be an object")
            items.append(Item(len(items), number, _messages(record), _reference(record), metadata))
        except (ValueError, UnicodeDecodeError) as exc:
            errors.append(f"{filename}: line {number}: {exc}")
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
        raise Invalid("; ".join(shown) + more, code="invalid_dataset", param="dataset")
    if not items:
        raise Invalid(f"{filename} has no items", code="invalid_dataset", param="dataset")
    if len(items) > MAX_ITEMS:
        raise Invalid(f"a dataset holds at most {MAX_ITEMS} items", code="invalid_dataset", param="dataset")
    return items
