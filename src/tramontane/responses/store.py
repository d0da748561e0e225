"""Responses kept per workspace: saving, finding (another workspace's id is
404), and rebuilding a chain's context from `previous_response_id` links."""

from __future__ import annotations

from typing import Any

from ..store import Store
from ..store.types import utcnow
from ..tenancy import get_owned
from .models import ResponseRow
from .schemas import ResponseObject

# A chain longer than this is cut at its oldest end: its context would not fit a
# served model's window long before.
MAX_CHAIN = 1000


class ResponseStore:
    def __init__(self, store: Store):
        self._store = store

    def save(self, workspace_id: str, response: ResponseObject, input_items: list[dict[str, Any]]) -> None:
        body = response.model_dump(mode="json")
        with self._store.write_session() as session:
            row = session.get(ResponseRow, response.id)
            if row is None:
                session.add(
                    ResponseRow(
                        id=response.id,
                        workspace_id=workspace_id,
                        previous_response_id=response.previous_response_id,
                        status=response.status,
                        body=body,
                        input_items=input_items,
                    )
                )
            else:
                row.status, row.body, row.updated_at = response.status, body, utcnow()

    def get(self, workspace_id: str, response_id: str) -> ResponseObject:
        with self._store.session() as session:
            row = get_owned(session, ResponseRow, response_id, workspace_id, "response")
            return ResponseObject.model_validate(row.body)

    def input_items(self, workspace_id: str, response_id: str) -> list[dict[str, Any]]:
        with self._store.session() as session:
            return list(get_owned(session, ResponseRow, response_id, workspace_id, "response").input_items)

    def delete(self, workspace_id: str, response_id: str) -> None:
        with self._store.write_session() as session:
            session.delete(get_owned(session, ResponseRow, response_id, workspace_id, "response"))

    def context(self, workspace_id: str, previous_response_id: str) -> list[dict[str, Any]]:
        """The items of the chain ending at `previous_response_id`, oldest first:
        each response's input, then its output. A deleted link ends the chain."""
        turns: list[list[dict[str, Any]]] = []
        with self._store.session() as session:
            row = get_owned(
                session, ResponseRow, previous_response_id, workspace_id, "response", param="previous_response_id"
            )
            while row is not None and len(turns) < MAX_CHAIN:
                turns.append(list(row.input_items) + list(row.body.get("output", [])))
                link = row.previous_response_id
                row = session.get(ResponseRow, link) if link else None
                if row is not None and row.workspace_id != workspace_id:
                    row = None
        return [item for turn in reversed(turns) for item in turn]
