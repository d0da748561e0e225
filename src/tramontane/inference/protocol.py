"""Request and response bodies of the OpenAI/Mistral-compatible API.

Requests only check types: range checks live in `SamplingParams` so that a bad
value is a 400 (as OpenAI answers) rather than FastAPI's 422, which is kept
for malformed bodies because the Mistral SDK parses its `detail` list.
Fields that neither API nor this server acts on are ignored, not rejected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# -- shared ------------------------------------------------------------------


class ContentPart(BaseModel):
    """One chunk of a message's content; only text parts can be served."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


Content = str | list[ContentPart]


class FunctionCall(BaseModel):
    name: str
    # Mistral accepts an object here; OpenAI always sends a JSON string.
    arguments: str | dict[str, Any]


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall
    index: int | None = None


class FunctionDefinition(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["auto", "none", "any", "required"] | NamedToolChoice


class JSONSchemaFormat(BaseModel):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema")
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # served from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


# -- chat --------------------------------------------------------------------


class SystemMessage(BaseModel):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(BaseModel):
    role: Literal["user"]
    content: Content


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCall] | None = None
    # Mistral: the model continues this message instead of starting a new one.
    prefix: bool = False


class ToolMessage(BaseModel):
    role: Literal["tool"]
    content: Content
    tool_call_id: str | None = None
    name: str | None = None


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class SamplingFields(BaseModel):
    """Settings shared by chat, completions and FIM."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    random_seed: int | None = None  # Mistral's name for seed
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None


# What the server gives a chat template itself (transformers' names).
_RESERVED_TEMPLATE_VARIABLES = frozenset(
    {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "raise_exception", "strftime_now"}
)


def _check_template_kwargs(value: dict[str, Any] | None) -> dict[str, Any] | None:
    for key in value or {}:
        if not key.isidentifier() or key in _RESERVED_TEMPLATE_VARIABLES:
            raise ValueError(f"chat_template_kwargs may not set {key!r}")
    return value


# vLLM's extension: variables for the model's chat template, e.g. Qwen3's
# {"enable_thinking": false}; not the ones the server itself sets.
TemplateKwargs = Annotated[dict[str, Any] | None, AfterValidator(_check_template_kwargs)]


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    safe_prompt: bool = False
    chat_template_kwargs: TemplateKwargs = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]
    token_id: int  # the Mistral SDK requires it


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str]


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """Serialized with exclude_unset, so only the fields a chunk sets are sent."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# -- text completions and FIM -----------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = None
    n: int | None = None


class FIMCompletionRequest(SamplingFields):
    prompt: str
    suffix: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# -- embeddings --------------------------------------------------------------


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    output_dimension: int | None = None  # Mistral's name for dimensions
    output_dtype: Literal["float"] = "float"
    user: str | None = None
    metadata: dict[str, Any] | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str when base64-encoded


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


# -- models ------------------------------------------------------------------


class ModelCapabilities(BaseModel):
    completion_chat: bool = False
    completion_fim: bool = False
    function_calling: bool = False
    fine_tuning: bool = False
    vision: bool = False
    classification: bool = False


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tramontane"
    type: Literal["base"] = "base"
    name: str
    description: str
    capabilities: ModelCapabilities
    max_context_length: int
    aliases: list[str] = Field(default_factory=list)
    default_model_temperature: float | None = None


class FineTunedModelCard(ModelCard):
    """Mistral's FTModelCard (type, job, root, archived), plus OpenAI/vLLM's `parent`."""

    type: Literal["fine-tuned"] = "fine-tuned"  # type: ignore[assignment]
    job: str
    root: str
    parent: str
    archived: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTunedModelCard | ModelCard]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


# -- errors and health ---------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthStatus(BaseModel):
    status: str
    models: list[str] = Field(default_factory=list)
    # What works in a degraded way, e.g. sandboxes on base while the default template builds.
    warnings: list[str] = Field(default_factory=list)
