"""Request and response bodies of Mistral's Agents, Conversations and Libraries APIs.

Requests ignore fields this server does not act on (guardrails, tool
confirmations...). Entries and stream events are built as plain dicts in
entries.py, in exactly the shape the SDK parses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..inference.protocol import Message, ResponseFormat, Tool, ToolChoice


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- tools -------------------------------------------------------------------


class FunctionSpec(_Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    strict: bool | None = None


class FunctionTool(_Request):
    type: Literal["function"] = "function"
    function: FunctionSpec


class CodeInterpreterTool(_Request):
    type: Literal["code_interpreter"]


class DocumentLibraryTool(_Request):
    type: Literal["document_library"]
    library_ids: list[str] = Field(min_length=1)


AgentTool = Annotated[FunctionTool | CodeInterpreterTool | DocumentLibraryTool, Field(discriminator="type")]


class CompletionArgs(_Request):
    """The sampling settings an agent or conversation may fix."""

    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    random_seed: int | None = None
    response_format: dict[str, Any] | None = None
    tool_choice: Literal["auto", "none", "any", "required"] | None = None


# -- agents ------------------------------------------------------------------


class AgentCreate(_Request):
    model: str
    name: str = Field(min_length=1, max_length=200)
    instructions: str | None = None
    tools: list[AgentTool] = Field(default_factory=list)
    completion_args: CompletionArgs = Field(default_factory=CompletionArgs)
    description: str | None = None
    handoffs: list[str] | None = None
    metadata: dict[str, Any] | None = None
    version_message: str | None = None


class AgentUpdate(_Request):
    """Fields left out keep their value in the new version."""

    model: str | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    instructions: str | None = None
    tools: list[AgentTool] | None = None
    completion_args: CompletionArgs | None = None
    description: str | None = None
    handoffs: list[str] | None = None
    metadata: dict[str, Any] | None = None
    version_message: str | None = None


class Agent(BaseModel):
    id: str
    object: Literal["agent"] = "agent"
    model: str
    name: str
    version: int
    versions: list[int]
    created_at: datetime
    updated_at: datetime
    deployment_chat: bool = False
    source: str = "api"
    instructions: str | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    completion_args: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    handoffs: list[str] | None = None
    metadata: dict[str, Any] | None = None
    version_message: str | None = None


class AgentAlias(BaseModel):
    alias: str
    version: int
    created_at: datetime
    updated_at: datetime


class AgentsCompletionRequest(_Request):
    """A chat completion by an agent: its model, instructions, tools and completion
    arguments, which the request's own fields override."""

    agent_id: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    min_tokens: int | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    random_seed: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    top_k: int | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Any] | None = None


# -- conversations -------------------------------------------------------------


class MessageInput(_Request):
    type: Literal["message.input"] = "message.input"
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class FunctionResultInput(_Request):
    type: Literal["function.result"] = "function.result"
    tool_call_id: str
    result: str


InputEntry = Annotated[MessageInput | FunctionResultInput, Field(discriminator="type")]
Inputs = str | list[InputEntry]
# A new conversation needs something to answer (appends and restarts have history).
StartInputs = str | Annotated[list[InputEntry], Field(min_length=1)]


class RunFields(_Request):
    stream: bool = False
    store: bool | None = None
    # "client" would hand handoffs to the caller; only the server runs them here.
    handoff_execution: Literal["server"] | None = None
    completion_args: CompletionArgs | None = None


class ConversationStart(RunFields):
    inputs: StartInputs
    agent_id: str | None = None
    agent_version: int | str | None = None
    model: str | None = None
    instructions: str | None = None
    tools: list[AgentTool] | None = None
    name: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


class ConversationAppend(RunFields):
    inputs: Inputs = Field(default_factory=list)


class ConversationRestart(RunFields):
    from_entry_id: str
    inputs: Inputs = Field(default_factory=list)
    metadata: dict[str, Any] | None = None
    agent_version: int | str | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ConversationResponse(BaseModel):
    object: Literal["conversation.response"] = "conversation.response"
    conversation_id: str
    outputs: list[dict[str, Any]]
    usage: Usage


class Conversation(BaseModel):
    """An agent's conversation (`agent_id`) or a model's (`model`, settings)."""

    object: Literal["conversation"] = "conversation"
    id: str
    created_at: datetime
    updated_at: datetime
    agent_id: str | None = None
    agent_version: int | None = None
    model: str | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    completion_args: dict[str, Any] | None = None
    name: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


class ConversationHistory(BaseModel):
    object: Literal["conversation.history"] = "conversation.history"
    conversation_id: str
    entries: list[dict[str, Any]]


class ConversationMessages(BaseModel):
    object: Literal["conversation.messages"] = "conversation.messages"
    conversation_id: str
    messages: list[dict[str, Any]]


# -- libraries -----------------------------------------------------------------


class LibraryCreate(_Request):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    chunk_size: int | None = Field(default=None, ge=256, le=32768)


class Library(BaseModel):
    id: str
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    owner_id: str | None
    owner_type: str = "Workspace"
    total_size: int
    nb_documents: int
    chunk_size: int


class Pagination(BaseModel):
    total_items: int
    total_pages: int
    current_page: int
    page_size: int
    has_more: bool


class LibraryList(BaseModel):
    data: list[Library]
    pagination: Pagination


class Document(BaseModel):
    id: str
    library_id: str
    hash: str
    mime_type: str | None
    extension: str | None
    size: int
    name: str
    created_at: datetime
    last_processed_at: datetime | None
    process_status: str
    processing_status: str
    uploaded_by_id: str | None
    uploaded_by_type: str = "Workspace"
    tokens_processing_total: int
    number_of_pages: int | None = None


class DocumentList(BaseModel):
    data: list[Document]
    pagination: Pagination


class ProcessingStatus(BaseModel):
    document_id: str
    process_status: str
    processing_status: str


class DocumentText(BaseModel):
    text: str
