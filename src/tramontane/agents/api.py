"""HTTP routes of the Agents, Conversations and Libraries APIs (Mistral's paths).

Every route needs a key with the inference capability; everything belongs to the
key's workspace and other workspaces' ids answer 404. Conversation runs are
metered like chat completions: every model call of the run counts.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from anyio.to_thread import run_sync as to_thread
from fastapi import APIRouter, Query, UploadFile
from starlette.responses import Response

from ..errors import APIError
from ..inference.chat import prepare
from ..inference.chat import respond as respond_chat
from ..inference.fast_path import Call, InferenceKey, InferenceRoute, Metered
from ..inference.protocol import ChatCompletionResponse
from ..inference.registry import ModelRegistry
from ..inference.streaming import STREAMABLE, EventStreamResponse
from ..sandbox import SandboxManager
from ..store import Store
from . import entries
from .backend import ChatBackend
from .completions import chat_request
from .conversations import Conversations, view
from .libraries import Libraries
from .models import DocumentRow, LibraryRow
from .registry import AgentRegistry
from .runner import Run, Speaker, input_entries
from .schemas import (
    Agent,
    AgentAlias,
    AgentsCompletionRequest,
    AgentCreate,
    AgentUpdate,
    Conversation,
    ConversationAppend,
    ConversationHistory,
    ConversationMessages,
    ConversationResponse,
    ConversationRestart,
    ConversationStart,
    Document,
    DocumentList,
    DocumentText,
    Library,
    LibraryCreate,
    LibraryList,
    Pagination,
    ProcessingStatus,
)
from .tools import ConversationSandboxes

# Pages past this one would overflow a 64-bit OFFSET; nothing is there anyway.
MAX_PAGE = 1_000_000
_NO_CONTENT = {"status_code": 204, "response_class": Response}


def _pagination(total: int, page: int, page_size: int) -> Pagination:
    pages = math.ceil(total / page_size) if page_size else 0
    return Pagination(
        total_items=total,
        total_pages=pages,
        current_page=page,
        page_size=page_size,
        has_more=(page + 1) * page_size < total,
    )


def _document(row: DocumentRow) -> Document:
    return Document(
        id=row.id,
        library_id=row.library_id,
        hash=row.hash,
        mime_type=row.mime_type,
        extension=row.extension,
        size=row.size,
        name=row.name,
        created_at=row.created_at,
        last_processed_at=row.processed_at,
        process_status="done",
        processing_status="Completed",
        uploaded_by_id=row.workspace_id,
        tokens_processing_total=row.tokens,
    )


def create_router(agents: AgentRegistry, conversations: Conversations, libraries: Libraries) -> APIRouter:
    router = APIRouter(route_class=InferenceRoute)

    def library_view(row: LibraryRow) -> Library:
        count, size = libraries.stats(row.id)
        return Library(
            id=row.id,
            name=row.name,
            description=row.description,
            created_at=row.created_at,
            updated_at=row.updated_at,
            owner_id=row.workspace_id,
            total_size=size,
            nb_documents=count,
            chunk_size=row.chunk_size,
        )

    # -- agents

    @router.post("/v1/agents", response_model=Agent)
    def create_agent(body: AgentCreate, principal: InferenceKey) -> Agent:
        conversations.check_model(body.model)
        return agents.create(principal, body)

    @router.get("/v1/agents", response_model=list[Agent])
    def list_agents(
        principal: InferenceKey, page: int = Query(0, ge=0, le=MAX_PAGE), page_size: int = Query(20, ge=1, le=1000)
    ) -> list[Agent]:
        return agents.list(principal, page, page_size)

    @router.get("/v1/agents/{agent_id}", response_model=Agent)
    def get_agent(agent_id: str, principal: InferenceKey, agent_version: int | str | None = None) -> Agent:
        return agents.get(principal, agent_id, agent_version)

    @router.patch("/v1/agents/{agent_id}", response_model=Agent)
    def update_agent(agent_id: str, body: AgentUpdate, principal: InferenceKey) -> Agent:
        if body.model is not None:
            conversations.check_model(body.model)
        return agents.update(principal, agent_id, body)

    @router.delete("/v1/agents/{agent_id}", **_NO_CONTENT)
    def delete_agent(agent_id: str, principal: InferenceKey) -> Response:
        agents.delete(principal, agent_id)
        return Response(status_code=204)

    @router.patch("/v1/agents/{agent_id}/version", response_model=Agent)
    def switch_version(agent_id: str, principal: InferenceKey, version: int = Query(ge=0, le=2**31 - 1)) -> Agent:
        return agents.switch(principal, agent_id, version)

    @router.get("/v1/agents/{agent_id}/versions", response_model=list[Agent])
    def list_versions(
        agent_id: str,
        principal: InferenceKey,
        page: int = Query(0, ge=0, le=MAX_PAGE),
        page_size: int = Query(20, ge=1, le=1000),
    ) -> list[Agent]:
        return agents.versions(principal, agent_id, page, page_size)

    @router.get("/v1/agents/{agent_id}/versions/{version}", response_model=Agent)
    def get_version(agent_id: str, version: str, principal: InferenceKey) -> Agent:
        return agents.get(principal, agent_id, version)

    @router.put("/v1/agents/{agent_id}/aliases", response_model=AgentAlias)
    def set_alias(
        agent_id: str,
        principal: InferenceKey,
        alias: str = Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$"),
        version: int = Query(ge=0, le=2**31 - 1),
    ) -> AgentAlias:
        return agents.set_alias(principal, agent_id, alias, version)

    @router.get("/v1/agents/{agent_id}/aliases", response_model=list[AgentAlias])
    def list_aliases(agent_id: str, principal: InferenceKey) -> list[AgentAlias]:
        return agents.aliases(principal, agent_id)

    @router.delete("/v1/agents/{agent_id}/aliases", **_NO_CONTENT)
    def delete_alias(agent_id: str, principal: InferenceKey, alias: str = Query(max_length=64)) -> Response:
        agents.delete_alias(principal, agent_id, alias)
        return Response(status_code=204)

    @router.post("/v1/agents/completions", response_model=ChatCompletionResponse, responses=STREAMABLE)
    async def agents_completion(body: AgentsCompletionRequest, call: Call) -> Response | ChatCompletionResponse:
        principal = call.principal
        agent = await to_thread(agents.get, principal, body.agent_id)
        gen, output = prepare(call.models, call.metrics, chat_request(agent, body), principal.workspace_id)
        return await respond_chat(call.request, call.meter, gen, output, body.stream, include_usage=False)

    # -- conversations (async routes: the store's blocking calls go to worker threads)

    async def respond(
        meter: Metered,
        conversation_id: str,
        speaker: Speaker,
        run: Run,
        events: AsyncIterator[dict[str, Any]],
        stream: bool,
    ) -> Response | ConversationResponse:
        meter.track(speaker.model, run.turns)
        if stream:
            return EventStreamResponse(meter.guard(entries.sse(e) async for e in events))
        async for event in events:
            if event["type"] == "conversation.response.error":
                raise APIError(event["code"], event["message"])
        return ConversationResponse(conversation_id=conversation_id, outputs=run.outputs, usage=run.usage)

    @router.post("/v1/conversations", response_model=ConversationResponse, responses=STREAMABLE)
    async def start_conversation(
        body: ConversationStart, principal: InferenceKey, meter: Metered
    ) -> Response | ConversationResponse:
        row, speaker, inputs = await to_thread(conversations.start, principal, body)
        run, events = await conversations.run(principal, row, speaker, inputs, body)
        return await respond(meter, row.id, speaker, run, events, body.stream)

    @router.get("/v1/conversations", response_model=list[Conversation])
    def list_conversations(
        principal: InferenceKey, page: int = Query(0, ge=0, le=MAX_PAGE), page_size: int = Query(100, ge=1, le=1000)
    ) -> list[Conversation]:
        return [view(row) for row in conversations.list(principal, page, page_size)]

    @router.get("/v1/conversations/{conversation_id}", response_model=Conversation)
    def get_conversation(conversation_id: str, principal: InferenceKey) -> Conversation:
        return view(conversations.get(principal, conversation_id))

    @router.delete("/v1/conversations/{conversation_id}", **_NO_CONTENT)
    async def delete_conversation(conversation_id: str, principal: InferenceKey) -> Response:
        await conversations.delete(principal, conversation_id)
        return Response(status_code=204)

    @router.post("/v1/conversations/{conversation_id}", response_model=ConversationResponse, responses=STREAMABLE)
    async def append(
        conversation_id: str, body: ConversationAppend, principal: InferenceKey, meter: Metered
    ) -> Response | ConversationResponse:
        row = await to_thread(conversations.get, principal, conversation_id)
        speaker = await to_thread(conversations.speaker, principal, row)
        run, events = await conversations.run(principal, row, speaker, input_entries(body.inputs), body)
        return await respond(meter, row.id, speaker, run, events, body.stream)

    @router.post(
        "/v1/conversations/{conversation_id}/restart", response_model=ConversationResponse, responses=STREAMABLE
    )
    async def restart(
        conversation_id: str, body: ConversationRestart, principal: InferenceKey, meter: Metered
    ) -> Response | ConversationResponse:
        row = await to_thread(conversations.restart, principal, conversation_id, body)
        speaker = await to_thread(conversations.speaker, principal, row, body.agent_version)
        run, events = await conversations.run(principal, row, speaker, input_entries(body.inputs), body)
        return await respond(meter, row.id, speaker, run, events, body.stream)

    @router.get("/v1/conversations/{conversation_id}/history", response_model=ConversationHistory)
    def history(conversation_id: str, principal: InferenceKey) -> ConversationHistory:
        found = conversations.entries(principal, conversation_id)
        return ConversationHistory(conversation_id=conversation_id, entries=[e.body for e in found])

    @router.get("/v1/conversations/{conversation_id}/messages", response_model=ConversationMessages)
    def messages(conversation_id: str, principal: InferenceKey) -> ConversationMessages:
        found = conversations.entries(principal, conversation_id)
        kept = [e.body for e in found if e.type in ("message.input", "message.output")]
        return ConversationMessages(conversation_id=conversation_id, messages=kept)

    # -- libraries

    @router.get("/v1/libraries", response_model=LibraryList)
    def list_libraries(principal: InferenceKey) -> LibraryList:
        rows = libraries.list(principal)
        return LibraryList(
            data=[library_view(r) for r in rows], pagination=_pagination(len(rows), 0, max(len(rows), 1))
        )

    @router.post("/v1/libraries", response_model=Library, status_code=201)
    def create_library(body: LibraryCreate, principal: InferenceKey) -> Library:
        return library_view(libraries.create(principal, body.name, body.description, body.chunk_size))

    @router.get("/v1/libraries/{library_id}", response_model=Library)
    def get_library(library_id: str, principal: InferenceKey) -> Library:
        return library_view(libraries.get(principal, library_id))

    @router.delete("/v1/libraries/{library_id}", response_model=Library)
    def delete_library(library_id: str, principal: InferenceKey) -> Library:
        view_before = library_view(libraries.get(principal, library_id))
        libraries.delete(principal, library_id)
        return view_before

    @router.post("/v1/libraries/{library_id}/documents", response_model=Document)
    async def upload_document(library_id: str, file: UploadFile, principal: InferenceKey) -> Document:
        data = await file.read()
        row = await libraries.upload(principal, library_id, file.filename or "document.txt", file.content_type, data)
        return _document(row)

    @router.get("/v1/libraries/{library_id}/documents", response_model=DocumentList)
    def list_documents(
        library_id: str,
        principal: InferenceKey,
        page: int = Query(0, ge=0, le=MAX_PAGE),
        page_size: int = Query(100, ge=1, le=1000),
    ) -> DocumentList:
        rows = libraries.documents(principal, library_id)
        chosen = rows[page * page_size : (page + 1) * page_size]
        return DocumentList(data=[_document(r) for r in chosen], pagination=_pagination(len(rows), page, page_size))

    @router.get("/v1/libraries/{library_id}/documents/{document_id}", response_model=Document)
    def get_document(library_id: str, document_id: str, principal: InferenceKey) -> Document:
        return _document(libraries.document(principal, library_id, document_id))

    @router.delete("/v1/libraries/{library_id}/documents/{document_id}", **_NO_CONTENT)
    async def delete_document(library_id: str, document_id: str, principal: InferenceKey) -> Response:
        await libraries.delete_document(principal, library_id, document_id)
        return Response(status_code=204)

    @router.get("/v1/libraries/{library_id}/documents/{document_id}/status", response_model=ProcessingStatus)
    def document_status(library_id: str, document_id: str, principal: InferenceKey) -> ProcessingStatus:
        row = libraries.document(principal, library_id, document_id)
        return ProcessingStatus(document_id=row.id, process_status="done", processing_status="Completed")

    @router.get("/v1/libraries/{library_id}/documents/{document_id}/text_content", response_model=DocumentText)
    def document_text(library_id: str, document_id: str, principal: InferenceKey) -> DocumentText:
        return DocumentText(text=libraries.document(principal, library_id, document_id).text)

    return router


def build_router(
    store: Store,
    registry: ModelRegistry,
    home: Path,
    backend: ChatBackend,
    sandboxes: SandboxManager | None,
    *,
    sandbox_idle_timeout_s: float = 600.0,
) -> APIRouter:
    """The routes over the store's agents and conversations, with the libraries'
    indexes under `home`. A conversation's sandbox is reclaimed after
    `sandbox_idle_timeout_s` unused."""
    agents = AgentRegistry(store)
    libraries = Libraries(store, registry, home)
    conversation_sandboxes = ConversationSandboxes(sandboxes, idle_timeout_s=sandbox_idle_timeout_s)
    conversations = Conversations(store, agents, backend, conversation_sandboxes, libraries)
    return create_router(agents, conversations, libraries)
