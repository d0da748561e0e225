"""HTTP routes of the Agents, Conversations and Libraries APIs (Mistral's paths):
module-level routers over the `AgentsService` of the app (`service.py`).

Every route needs a key with the inference capability; everything belongs to the
key's workspace and other workspaces' ids answer 404. Conversation runs are
metered like chat completions: every model call of the run counts.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

from anyio.to_thread import run_sync as to_thread
from fastapi import APIRouter, Query, UploadFile
from starlette.responses import Response

from ..errors import of_status
from ..inference.chat import prepare_async
from ..inference.chat import respond as respond_chat
from ..inference.fast_path import Call, InferenceKey, InferenceRoute, Metered
from ..inference.protocol import ChatCompletionResponse
from ..inference.streaming import STREAMABLE, EventStreamResponse, until_disconnected
from . import entries
from .completions import chat_request
from .conversations import view
from .libraries import Libraries
from .models import DocumentRow, LibraryRow
from .runner import Run, Speaker, input_entries
from .schemas import (
    Agent,
    AgentAlias,
    AgentCreate,
    AgentsCompletionRequest,
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
from .service import AgentsService, AgentStore, ConversationStore, LibraryStore

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


agents_router = APIRouter(route_class=InferenceRoute)
conversations_router = APIRouter(route_class=InferenceRoute)
libraries_router = APIRouter(route_class=InferenceRoute)
# In the order they are matched; the platform includes each in the app.
routers = (agents_router, conversations_router, libraries_router)


def _library_view(libraries: Libraries, row: LibraryRow) -> Library:
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

@agents_router.post("/v1/agents", response_model=Agent)
def create_agent(
    agents: AgentStore,
    conversations: ConversationStore,
    body: AgentCreate,
    principal: InferenceKey,
) -> Agent:
    conversations.check_model(body.model)
    return agents.create(principal, body)


@agents_router.get("/v1/agents", response_model=list[Agent])
def list_agents(
    agents: AgentStore,
    principal: InferenceKey, page: int = Query(0, ge=0, le=MAX_PAGE), page_size: int = Query(20, ge=1, le=1000)
) -> list[Agent]:
    return agents.list(principal, page, page_size)


@agents_router.get("/v1/agents/{agent_id}", response_model=Agent)
def get_agent(
    agents: AgentStore,
    agent_id: str,
    principal: InferenceKey,
    agent_version: int | str | None = None,
) -> Agent:
    return agents.get(principal, agent_id, agent_version)


@agents_router.patch("/v1/agents/{agent_id}", response_model=Agent)
def update_agent(
    agents: AgentStore,
    conversations: ConversationStore,
    agent_id: str,
    body: AgentUpdate,
    principal: InferenceKey,
) -> Agent:
    if body.model is not None:
        conversations.check_model(body.model)
    return agents.update(principal, agent_id, body)


@agents_router.delete("/v1/agents/{agent_id}", **_NO_CONTENT)
def delete_agent(agents: AgentStore, agent_id: str, principal: InferenceKey) -> Response:
    agents.delete(principal, agent_id)
    return Response(status_code=204)


@agents_router.patch("/v1/agents/{agent_id}/version", response_model=Agent)
def switch_version(
    agents: AgentStore,
    agent_id: str,
    principal: InferenceKey,
    version: int = Query(ge=0, le=2**31 - 1),
) -> Agent:
    return agents.switch(principal, agent_id, version)


@agents_router.get("/v1/agents/{agent_id}/versions", response_model=list[Agent])
def list_versions(
    agents: AgentStore,
    agent_id: str,
    principal: InferenceKey,
    page: int = Query(0, ge=0, le=MAX_PAGE),
    page_size: int = Query(20, ge=1, le=1000),
) -> list[Agent]:
    return agents.versions(principal, agent_id, page, page_size)


@agents_router.get("/v1/agents/{agent_id}/versions/{version}", response_model=Agent)
def get_version(agents: AgentStore, agent_id: str, version: str, principal: InferenceKey) -> Agent:
    return agents.get(principal, agent_id, version)


@agents_router.put("/v1/agents/{agent_id}/aliases", response_model=AgentAlias)
def set_alias(
    agents: AgentStore,
    agent_id: str,
    principal: InferenceKey,
    alias: str = Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$"),
    version: int = Query(ge=0, le=2**31 - 1),
) -> AgentAlias:
    return agents.set_alias(principal, agent_id, alias, version)


@agents_router.get("/v1/agents/{agent_id}/aliases", response_model=list[AgentAlias])
def list_aliases(agents: AgentStore, agent_id: str, principal: InferenceKey) -> list[AgentAlias]:
    return agents.aliases(principal, agent_id)


@agents_router.delete("/v1/agents/{agent_id}/aliases", **_NO_CONTENT)
def delete_alias(
    agents: AgentStore,
    agent_id: str,
    principal: InferenceKey,
    alias: str = Query(max_length=64),
) -> Response:
    agents.delete_alias(principal, agent_id, alias)
    return Response(status_code=204)


@agents_router.post("/v1/agents/completions", response_model=ChatCompletionResponse, responses=STREAMABLE)
async def agents_completion(body: AgentsCompletionRequest, call: Call) -> Response | ChatCompletionResponse:
    principal = call.principal
    agent = await to_thread(AgentsService.of(call.request).agents.get, principal, body.agent_id)
    gen, output = await prepare_async(call.models, call.metrics, chat_request(agent, body), principal.workspace_id)
    return await respond_chat(call.request, call.meter, gen, output, body.stream, include_usage=False)


# -- conversations (async routes: the store's blocking calls go to worker threads)

async def _respond(
    meter: Metered,
    conversation_id: str,
    speaker: Speaker,
    run: Run,
    events: AsyncIterator[dict[str, Any]],
    stream: bool,
) -> Response | ConversationResponse:
    meter.track(speaker.model, run.turns)
    if stream:  # a client gone cancels the stream, and with it the run
        return EventStreamResponse(meter.guard(entries.sse(e) async for e in events))

    async def run_to_end() -> None:
        async for event in events:
            if event["type"] == "conversation.response.error":
                # The run reported its error in-band, as a status (a stream's terms); the
                # same kind again shows the client that status and message.
                raise of_status(event["code"], event["message"])

    # Starlette does not cancel a handler whose client left: this does, and the run with it.
    await until_disconnected(meter.request, run_to_end())
    return ConversationResponse(conversation_id=conversation_id, outputs=run.outputs, usage=run.usage)


@conversations_router.post("/v1/conversations", response_model=ConversationResponse, responses=STREAMABLE)
async def start_conversation(
    conversations: ConversationStore,
    body: ConversationStart, principal: InferenceKey, meter: Metered
) -> Response | ConversationResponse:
    row, speaker, inputs = await to_thread(conversations.start, principal, body)
    run, events = await conversations.run(principal, row, speaker, inputs, body)
    return await _respond(meter, row.id, speaker, run, events, body.stream)


@conversations_router.get("/v1/conversations", response_model=list[Conversation])
def list_conversations(
    conversations: ConversationStore,
    principal: InferenceKey, page: int = Query(0, ge=0, le=MAX_PAGE), page_size: int = Query(100, ge=1, le=1000)
) -> list[Conversation]:
    return [view(row) for row in conversations.list(principal, page, page_size)]


@conversations_router.get("/v1/conversations/{conversation_id}", response_model=Conversation)
def get_conversation(conversations: ConversationStore, conversation_id: str, principal: InferenceKey) -> Conversation:
    return view(conversations.get(principal, conversation_id))


@conversations_router.delete("/v1/conversations/{conversation_id}", **_NO_CONTENT)
async def delete_conversation(
    conversations: ConversationStore,
    conversation_id: str,
    principal: InferenceKey,
) -> Response:
    await conversations.delete(principal, conversation_id)
    return Response(status_code=204)


@conversations_router.post(
    "/v1/conversations/{conversation_id}", response_model=ConversationResponse, responses=STREAMABLE
)
async def append(
    conversations: ConversationStore,
    conversation_id: str, body: ConversationAppend, principal: InferenceKey, meter: Metered
) -> Response | ConversationResponse:
    row = await to_thread(conversations.get, principal, conversation_id)
    speaker = await to_thread(conversations.speaker, principal, row)
    run, events = await conversations.run(principal, row, speaker, input_entries(body.inputs), body)
    return await _respond(meter, row.id, speaker, run, events, body.stream)


@conversations_router.post(
    "/v1/conversations/{conversation_id}/restart", response_model=ConversationResponse, responses=STREAMABLE
)
async def restart(
    conversations: ConversationStore,
    conversation_id: str, body: ConversationRestart, principal: InferenceKey, meter: Metered
) -> Response | ConversationResponse:
    row = await to_thread(conversations.restart, principal, conversation_id, body)
    speaker = await to_thread(conversations.speaker, principal, row, body.agent_version)
    run, events = await conversations.run(principal, row, speaker, input_entries(body.inputs), body)
    return await _respond(meter, row.id, speaker, run, events, body.stream)


@conversations_router.get("/v1/conversations/{conversation_id}/history", response_model=ConversationHistory)
def history(conversations: ConversationStore, conversation_id: str, principal: InferenceKey) -> ConversationHistory:
    found = conversations.entries(principal, conversation_id)
    return ConversationHistory(conversation_id=conversation_id, entries=[e.body for e in found])


@conversations_router.get("/v1/conversations/{conversation_id}/messages", response_model=ConversationMessages)
def messages(conversations: ConversationStore, conversation_id: str, principal: InferenceKey) -> ConversationMessages:
    found = conversations.entries(principal, conversation_id)
    kept = [e.body for e in found if e.type in ("message.input", "message.output")]
    return ConversationMessages(conversation_id=conversation_id, messages=kept)


# -- libraries

@libraries_router.get("/v1/libraries", response_model=LibraryList)
def list_libraries(libraries: LibraryStore, principal: InferenceKey) -> LibraryList:
    rows = libraries.list(principal)
    return LibraryList(
        data=[_library_view(libraries, r) for r in rows], pagination=_pagination(len(rows), 0, max(len(rows), 1))
    )


@libraries_router.post("/v1/libraries", response_model=Library, status_code=201)
def create_library(libraries: LibraryStore, body: LibraryCreate, principal: InferenceKey) -> Library:
    return _library_view(libraries, libraries.create(principal, body.name, body.description, body.chunk_size))


@libraries_router.get("/v1/libraries/{library_id}", response_model=Library)
def get_library(libraries: LibraryStore, library_id: str, principal: InferenceKey) -> Library:
    return _library_view(libraries, libraries.get(principal, library_id))


@libraries_router.delete("/v1/libraries/{library_id}", response_model=Library)
def delete_library(libraries: LibraryStore, library_id: str, principal: InferenceKey) -> Library:
    view_before = _library_view(libraries, libraries.get(principal, library_id))
    libraries.delete(principal, library_id)
    return view_before


@libraries_router.post("/v1/libraries/{library_id}/documents", response_model=Document)
async def upload_document(
    libraries: LibraryStore,
    library_id: str,
    file: UploadFile,
    principal: InferenceKey,
) -> Document:
    data = await file.read()
    row = await libraries.upload(principal, library_id, file.filename or "document.txt", file.content_type, data)
    return _document(row)


@libraries_router.get("/v1/libraries/{library_id}/documents", response_model=DocumentList)
def list_documents(
    libraries: LibraryStore,
    library_id: str,
    principal: InferenceKey,
    page: int = Query(0, ge=0, le=MAX_PAGE),
    page_size: int = Query(100, ge=1, le=1000),
) -> DocumentList:
    rows = libraries.documents(principal, library_id)
    chosen = rows[page * page_size : (page + 1) * page_size]
    return DocumentList(data=[_document(r) for r in chosen], pagination=_pagination(len(rows), page, page_size))


@libraries_router.get("/v1/libraries/{library_id}/documents/{document_id}", response_model=Document)
def get_document(libraries: LibraryStore, library_id: str, document_id: str, principal: InferenceKey) -> Document:
    return _document(libraries.document(principal, library_id, document_id))


@libraries_router.delete("/v1/libraries/{library_id}/documents/{document_id}", **_NO_CONTENT)
async def delete_document(
    libraries: LibraryStore,
    library_id: str,
    document_id: str,
    principal: InferenceKey,
) -> Response:
    await libraries.delete_document(principal, library_id, document_id)
    return Response(status_code=204)


@libraries_router.get("/v1/libraries/{library_id}/documents/{document_id}/status", response_model=ProcessingStatus)
def document_status(
    libraries: LibraryStore,
    library_id: str,
    document_id: str,
    principal: InferenceKey,
) -> ProcessingStatus:
    row = libraries.document(principal, library_id, document_id)
    return ProcessingStatus(document_id=row.id, process_status="done", processing_status="Completed")


@libraries_router.get("/v1/libraries/{library_id}/documents/{document_id}/text_content", response_model=DocumentText)
def document_text(libraries: LibraryStore, library_id: str, document_id: str, principal: InferenceKey) -> DocumentText:
    return DocumentText(text=libraries.document(principal, library_id, document_id).text)
