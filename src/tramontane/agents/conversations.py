"""Conversations of a workspace: their settings and entries in the store, and the
runs that add to them (one at a time per conversation)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from sqlalchemy import func, select

from ..errors import Conflict, Invalid
from ..store import Store
from ..store.types import new_id, utcnow
from ..tenancy import Principal, get_owned, not_found, owned
from .backend import ChatBackend
from .entries import Stored
from .libraries import Libraries
from .models import ConversationRow, EntryRow
from .registry import AgentRegistry
from .runner import Run, RunContext, Speaker, check_inputs, input_entries
from .schemas import Conversation, ConversationRestart, ConversationStart, RunFields
from .tools import ConversationSandboxes

_ID_PREFIX = {
    "message.input": "msg",
    "message.output": "msg",
    "function.call": "fc",
    "function.result": "fr",
    "tool.execution": "tool",
    "agent.handoff": "handoff",
}


def view(row: ConversationRow) -> Conversation:
    return Conversation(
        id=row.id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        agent_id=row.agent_id,
        agent_version=row.agent_version,
        name=row.name,
        description=row.description,
        metadata=row.meta,
        **row.config,
    )


class Conversations:
    def __init__(
        self,
        store: Store,
        agents: AgentRegistry,
        backend: ChatBackend,
        sandboxes: ConversationSandboxes,
        libraries: Libraries,
    ):
        self._store = store
        self._agents = agents
        self._backend = backend
        self.sandboxes = sandboxes
        self._libraries = libraries
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def check_model(self, model: str) -> None:
        self._backend.check(model)

    # -- reading

    def get(self, principal: Principal, conversation_id: str) -> ConversationRow:
        with self._store.session() as session:
            return get_owned(session, ConversationRow, conversation_id, principal, "conversation")

    def list(self, principal: Principal, page: int, page_size: int) -> list[ConversationRow]:
        with self._store.session() as session:
            query = owned(ConversationRow, principal).order_by(ConversationRow.created_at.desc(), ConversationRow.id)
            return list(session.scalars(query.offset(page * page_size).limit(page_size)))

    def entries(self, principal: Principal, conversation_id: str) -> list[Stored]:
        with self._store.session() as session:
            row = get_owned(session, ConversationRow, conversation_id, principal, "conversation")
            query = select(EntryRow).where(EntryRow.conversation_id == row.id).order_by(EntryRow.position)
            return [Stored(e.body, e.model_text) for e in session.scalars(query)]

    async def delete(self, principal: Principal, conversation_id: str) -> None:
        with self._store.write_session() as session:
            session.delete(get_owned(session, ConversationRow, conversation_id, principal, "conversation"))
        await self.sandboxes.release(conversation_id, principal.workspace_id)

    # -- runs

    def speaker(self, principal: Principal, row: ConversationRow, version: int | str | None = None) -> Speaker:
        if row.agent_id is None:
            config = row.config
            return Speaker(
                config["model"],
                config.get("instructions"),
                config.get("tools") or [],
                config.get("completion_args") or {},
            )
        agent = self._agents.get(principal, row.agent_id, version if version is not None else row.agent_version)
        return Speaker.of(agent)

    def _context(self, principal: Principal, conversation_id: str, stored: bool) -> RunContext:
        position = 0
        if stored:
            with self._store.session() as session:
                last = session.scalar(
                    select(func.max(EntryRow.position)).where(EntryRow.conversation_id == conversation_id)
                )
                position = 0 if last is None else last + 1
        counter = iter(range(position, 1 << 31))

        def write(entry: Stored) -> None:
            with self._store.write_session() as session:
                session.add(
                    EntryRow(
                        id=entry.body["id"],
                        workspace_id=principal.workspace_id,
                        conversation_id=conversation_id,
                        position=next(counter),
                        type=entry.type,
                        body=entry.body,
                        model_text=entry.model_text,
                    )
                )
                conversation = session.get(ConversationRow, conversation_id)
                if conversation is not None:
                    conversation.updated_at = utcnow()

        async def save(entry: Stored) -> None:
            if stored:
                await anyio.to_thread.run_sync(write, entry)

        return RunContext(
            self._backend,
            self.sandboxes,
            self._libraries,
            principal.workspace_id,
            conversation_id,
            save,
            lambda agent_id: self._agents.find(principal.workspace_id, agent_id),
        )

    @asynccontextmanager
    async def _exclusive(self, conversation_id: str) -> AsyncIterator[None]:
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = self._locks[conversation_id] = asyncio.Lock()
        async with lock:
            yield

    def start(self, principal: Principal, body: ConversationStart) -> tuple[ConversationRow, Speaker, list[Stored]]:
        if (body.agent_id is None) == (body.model is None):
            raise Invalid("Start a conversation with either an agent_id or a model", param="agent_id")
        if body.agent_id is not None:
            agent = self._agents.get(principal, body.agent_id, body.agent_version)
            row = ConversationRow(
                workspace_id=principal.workspace_id,
                agent_id=agent.id,
                agent_version=agent.version if body.agent_version is not None else None,
            )
            speaker = Speaker.of(agent)
        else:
            assert body.model is not None
            self._backend.check(body.model)
            config: dict[str, Any] = {
                "model": body.model,
                "instructions": body.instructions,
                "tools": [t.model_dump(mode="json", exclude_none=True) for t in body.tools or []],
                "completion_args": (body.completion_args.model_dump(exclude_none=True) if body.completion_args else {}),
            }
            row = ConversationRow(workspace_id=principal.workspace_id, config=config)
            speaker = self.speaker(principal, row)
        row.id = new_id("conv")
        row.name, row.description, row.meta = body.name, body.description, body.metadata
        row.created_at = row.updated_at = utcnow()
        inputs = input_entries(body.inputs)
        if body.store is not False:
            with self._store.write_session() as session:
                session.add(row)
        return row, speaker, inputs

    def restart(self, principal: Principal, conversation_id: str, body: ConversationRestart) -> ConversationRow:
        """A new conversation holding the entries up to `from_entry_id`, included."""
        source = self.get(principal, conversation_id)
        history = self.entries(principal, conversation_id)
        cut = next((i for i, e in enumerate(history) if e.body["id"] == body.from_entry_id), None)
        if cut is None:
            raise not_found("entry", body.from_entry_id)
        now = utcnow()
        row = ConversationRow(
            id=new_id("conv"),
            workspace_id=principal.workspace_id,
            agent_id=source.agent_id,
            agent_version=source.agent_version,
            config=source.config,
            name=source.name,
            description=source.description,
            meta=body.metadata or source.meta,
            created_at=now,
            updated_at=now,
        )
        with self._store.write_session() as session:
            session.add(row)
            session.flush()
            for position, entry in enumerate(history[: cut + 1]):
                copy = {**entry.body, "id": new_id(_ID_PREFIX[entry.type])}
                session.add(
                    EntryRow(
                        id=copy["id"],
                        workspace_id=row.workspace_id,
                        conversation_id=row.id,
                        position=position,
                        type=entry.type,
                        body=copy,
                        model_text=entry.model_text,
                    )
                )
        return row

    async def run(
        self,
        principal: Principal,
        row: ConversationRow,
        speaker: Speaker,
        inputs: list[Stored],
        fields: RunFields,
    ) -> tuple[Run, AsyncIterator[dict[str, Any]]]:
        """A run of `row` on `inputs`; its events must be consumed for it to happen."""
        lock = self._locks.get(row.id)
        if lock is not None and lock.locked():
            raise Conflict(f"Conversation {row.id} is already running", code="conversation_busy")
        run = await anyio.to_thread.run_sync(self._prepare, principal, row, speaker, inputs, fields)

        async def events() -> AsyncIterator[dict[str, Any]]:
            async with self._exclusive(row.id):
                await run.add_inputs(inputs)
                async for event in run.events():
                    yield event

        return run, events()

    def _prepare(
        self, principal: Principal, row: ConversationRow, speaker: Speaker, inputs: list[Stored], fields: RunFields
    ) -> Run:
        exists = self._exists(row.id)  # a conversation started with store=false is not
        stored = exists and fields.store is not False
        history = self.entries(principal, row.id) if exists else []
        check_inputs(history, inputs)
        args = fields.completion_args.model_dump(exclude_none=True) if fields.completion_args else {}
        return Run(self._context(principal, row.id, stored), speaker, history, args)

    def _exists(self, conversation_id: str) -> bool:
        with self._store.session() as session:
            return session.get(ConversationRow, conversation_id) is not None
