"""Output items built from a model's text as it comes, with the typed stream
events that announce them (`response.output_item.added`, `.output_text.delta`,
`.function_call_arguments.delta`, ...). A whole response goes through the same
builder with its events dropped, so streamed and whole responses cannot differ."""

from __future__ import annotations

import json
from typing import Any

from ..inference.tool_calls import ContentDelta, Event, ToolCallDelta
from .items import function_call, new_item_id, output_message


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event, named by its type as OpenAI sends them."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


class OutputBuilder:
    """Folds tool-call parser events into output items. `pending` holds the
    stream events not yet sent, each with its sequence number."""

    def __init__(self, first_sequence_number: int = 0):
        self.output: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self._sequence = first_sequence_number
        self._message: int | None = None  # output index of the message being written
        self._calls: dict[int, int] = {}  # the parser's call index -> output index
        self._open_call: int | None = None

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        self.pending.append(event)
        return event

    def take_emitted(self, kind: str, **fields: Any) -> dict[str, Any]:
        """An event sent at once, with nothing pending before it."""
        assert not self.pending
        event = self.emit(kind, **fields)
        self.pending.clear()
        return event

    def take(self) -> list[dict[str, Any]]:
        events, self.pending = self.pending, []
        return events

    def feed(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ContentDelta):
                self._text(event.text)
            else:
                self._call(event)

    def close(self) -> None:
        """Ends the open items (the generation is over)."""
        self._close_message()
        self._close_call()

    # -- message text

    def _text(self, text: str) -> None:
        if not text:
            return
        if self._message is None:
            self._close_call()
            self._message = len(self.output)
            item = output_message("", status="in_progress", item_id=new_item_id("msg"))
            item["content"] = []
            self.output.append(item)
            self.emit("response.output_item.added", output_index=self._message, item=_copy(item))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            self.emit(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self._message,
                content_index=0,
                part=_copy(part),
            )
        item = self.output[self._message]
        item["content"][0]["text"] += text
        self.emit(
            "response.output_text.delta",
            item_id=item["id"],
            output_index=self._message,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _close_message(self) -> None:
        if self._message is None:
            return
        index, self._message = self._message, None
        item = self.output[index]
        part = item["content"][0]
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        self.emit("response.output_text.done", **common, text=part["text"], logprobs=[])
        self.emit("response.content_part.done", **common, part=_copy(part))
        item["status"] = "completed"
        self.emit("response.output_item.done", output_index=index, item=_copy(item))

    # -- function calls

    def _call(self, delta: ToolCallDelta) -> None:
        if delta.id is not None:  # a new call
            self._close_message()
            self._close_call()
            index = len(self.output)
            self._calls[delta.index] = self._open_call = index
            item = function_call(delta.id, delta.name or "", "")
            item["status"] = "in_progress"
            self.output.append(item)
            self.emit("response.output_item.added", output_index=index, item=_copy(item))
        index = self._calls[delta.index]
        if delta.arguments:
            item = self.output[index]
            item["arguments"] += delta.arguments
            self.emit(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=delta.arguments
            )

    def _close_call(self) -> None:
        if self._open_call is None:
            return
        index, self._open_call = self._open_call, None
        item = self.output[index]
        item["status"] = "completed"
        self.emit(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            name=item["name"],
            arguments=item["arguments"],
        )
        self.emit("response.output_item.done", output_index=index, item=_copy(item))


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """A snapshot: later deltas must not change an event already built."""
    return json.loads(json.dumps(item))
