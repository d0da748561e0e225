"""Reading the server's event streams from the CLI clients."""

from __future__ import annotations

import json
from typing import Any

DONE = object()


def parse_line(line: str) -> dict[str, Any] | object | None:
    """A `data:` line's JSON, DONE for `data: [DONE]`, None for anything else."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    return DONE if data == "[DONE]" else json.loads(data)


def error_message(body: dict[str, Any] | str) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("message", str(body))
    return str(body)
