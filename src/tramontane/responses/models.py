"""Stored responses, per workspace (erased with it through `WorkspaceOwned`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from ..store.models import Base, WorkspaceOwned
from ..store.types import utcnow


class ResponseRow(WorkspaceOwned, Base):
    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign key: a deleted predecessor ends the chain, it does not delete its successors.
    previous_response_id: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16))
    # The response object as the API shows it, and the input items it was given.
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
