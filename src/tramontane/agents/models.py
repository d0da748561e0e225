"""Durable state of agents, conversations and document libraries.

Every row belongs to a workspace (ON DELETE CASCADE through `WorkspaceOwned`), so
erasing a workspace erases its agents, conversations and documents; the vector
index of a library is a file in the workspace's directory, erased with it, or
(with PostgreSQL, shared by every gateway) rows of `library_vectors`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..store.models import AutoId, Base, WorkspaceOwned
from ..store.types import new_id, utcnow


class AgentRow(WorkspaceOwned, Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ag"))
    # The version conversations use unless they ask for another.
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentVersionRow(WorkspaceOwned, Base):
    """One immutable version of an agent: every update adds one."""

    __tablename__ = "agent_versions"

    agent_id: Mapped[str] = mapped_column(String(32), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # model, name, description, instructions, tools, completion_args, handoffs, metadata, version_message
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentAliasRow(WorkspaceOwned, Base):
    """A name for one of an agent's versions, usable wherever a version number is."""

    __tablename__ = "agent_aliases"

    agent_id: Mapped[str] = mapped_column(String(32), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConversationRow(WorkspaceOwned, Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("conv"))
    # An agent's conversation names the agent (no foreign key: it outlives the agent's
    # deletion as a transcript); a model's conversation carries its own settings.
    agent_id: Mapped[str | None] = mapped_column(String(32), default=None)
    agent_version: Mapped[int | None] = mapped_column(Integer, default=None)
    # model, instructions, tools, completion_args (model conversations only)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EntryRow(WorkspaceOwned, Base):
    __tablename__ = "conversation_entries"
    __table_args__ = (UniqueConstraint("conversation_id", "position"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    # The entry as the API shows it.
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A tool's result as the model read it (tool.execution entries only).
    model_text: Mapped[str | None] = mapped_column(Text, default=None)


class LibraryRow(WorkspaceOwned, Base):
    __tablename__ = "libraries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("lib"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    chunk_size: Mapped[int] = mapped_column(Integer)
    # Queries must be embedded by the model that embedded the chunks.
    embedding_model: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped with every change to its vectors in the shared index, in the same
    # transaction: a gateway's copy is up to date while the number it read matches.
    vectors_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class DocumentRow(WorkspaceOwned, Base):
    __tablename__ = "library_documents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("doc"))
    library_id: Mapped[str] = mapped_column(String(32), ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    mime_type: Mapped[str | None] = mapped_column(String(200), default=None)
    extension: Mapped[str | None] = mapped_column(String(32), default=None)
    size: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the uploaded bytes
    text: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(default=None)


class ChunkRow(WorkspaceOwned, Base):
    """A passage of a document; its id is its row id in the library's vector index."""

    __tablename__ = "document_chunks"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True)
    document_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("library_documents.id", ondelete="CASCADE"), index=True
    )
    library_id: Mapped[str] = mapped_column(String(32), index=True)
    chunk_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1-based, in paged documents (PDF)


class ChunkVectorRow(Base):
    """A chunk's embedding in the shared index (shared_index.py): float32,
    little-endian, unit length. Goes with its chunk (ON DELETE CASCADE)."""

    __tablename__ = "library_vectors"

    chunk_id: Mapped[int] = mapped_column(
        AutoId, ForeignKey("document_chunks.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    library_id: Mapped[str] = mapped_column(String(32), index=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
