"""The models one server holds, by name: chat engines and embedding models side by side,
and LoRA adapters (fine-tuned models) served by their base model's engine."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..engine import AsyncEngine, EngineConfig
from ..engine.defaults import (
    DEFAULT_CHAT_MODEL_NAME,
    DEFAULT_EMBEDDING_MODEL_NAME,
    default_chat_model_path,
    default_embedding_model_path,
)
from ..engine.embedding import EmbeddingModel
from ..errors import Invalid, NotFound, Unavailable
from .classifiers import ClassifierEntry, saved_head
from .fim import FIMFormat
from .images import ImageLoader
from .protocol import FineTunedModelCard, ModelCapabilities, ModelCard
from .structured import GrammarCompiler
from .tool_calls import template_handles_tools

# Sampling temperature when a request sets none (Mistral publishes one per model).
DEFAULT_TEMPERATURE = 0.7

Kind = Literal["chat", "embedding"]


@dataclass
class ModelSpec:
    path: str
    name: str | None = None  # None: the model's own name
    kind: Kind | None = None  # None: detected from the files

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`PATH` or `NAME=PATH`."""
        name, sep, path = text.partition("=")
        return cls(path=path, name=name) if sep and name and path else cls(path=text)

    @property
    def resolved_kind(self) -> Kind:
        return self.kind or detect_kind(self.path)


def default_model_specs() -> list[ModelSpec]:
    return [
        ModelSpec(default_chat_model_path(), DEFAULT_CHAT_MODEL_NAME, "chat"),
        ModelSpec(default_embedding_model_path(), DEFAULT_EMBEDDING_MODEL_NAME, "embedding"),
    ]


def detect_kind(path: str) -> Kind:
    """Sentence-transformers folders and BERT-family configs are embedding models;
    everything else (GGUF files, Llama/Mistral folders) is served for chat."""
    if not os.path.isdir(path):
        return "chat"
    if os.path.exists(os.path.join(path, "modules.json")):
        return "embedding"
    try:
        with open(os.path.join(path, "config.json")) as f:
            model_type = json.load(f).get("model_type", "")
    except (OSError, ValueError):
        return "chat"
    return "embedding" if model_type in {"bert", "roberta", "xlm-roberta", "mpnet", "nomic_bert"} else "chat"


@dataclass(frozen=True)
class Adapter:
    root: str  # the base model it runs on
    job: str | None  # the fine-tuning job that made it


@dataclass
class ChatModel:
    name: str
    engine: AsyncEngine
    grammar: GrammarCompiler
    fim: FIMFormat | None
    tools_in_template: bool  # False: tools are described in the system prompt instead
    path: str = ""  # the checkpoint it was loaded from (what fine-tuning trains on)
    created: int = field(default_factory=lambda: int(time.time()))
    adapter: Adapter | None = None  # set: a LoRA adapter, named `name` in the engine too
    workspace_id: str | None = None  # the workspace that owns it; None: every workspace's

    @property
    def lora(self) -> str | None:
        """The engine's adapter name for SamplingParams(lora=...); None for a base model."""
        return self.name if self.adapter is not None else None

    def card(self) -> ModelCard:
        capabilities = ModelCapabilities(
            completion_chat=True,
            completion_fim=self.fim is not None,
            function_calling=True,
            vision=self.engine.model_config.vision is not None,
        )
        architecture = self.engine.model_config.architecture
        if self.adapter is not None:
            return FineTunedModelCard(
                id=self.name,
                created=self.created,
                name=self.name,
                description=f"LoRA adapter of {self.adapter.root} served by Tramontane",
                capabilities=capabilities,
                max_context_length=self.engine.max_model_len,
                default_model_temperature=DEFAULT_TEMPERATURE,
                # Mistral's SDK requires a job id; an adapter loaded from disk has none.
                job=self.adapter.job or "",
                root=self.adapter.root,
                parent=self.adapter.root,
            )
        return ModelCard(
            id=self.name,
            created=self.created,
            name=self.name,
            description=f"{architecture} chat model served by Tramontane",
            capabilities=capabilities,
            max_context_length=self.engine.max_model_len,
            default_model_temperature=DEFAULT_TEMPERATURE,
        )


@dataclass
class EmbeddingEntry:
    name: str
    model: EmbeddingModel
    path: str = ""  # the folder it was loaded from (what classifier jobs train on)
    created: int = field(default_factory=lambda: int(time.time()))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one forward pass at a time

    def card(self) -> ModelCard:
        return ModelCard(
            id=self.name,
            created=self.created,
            name=self.name,
            description=f"{self.model.dim}-dimensional text embedding model served by Tramontane",
            capabilities=ModelCapabilities(),
            max_context_length=self.model.max_seq_len,
        )


class ModelRegistry:
    def __init__(self, images: ImageLoader | None = None) -> None:
        self._models: dict[str, ChatModel | EmbeddingEntry | ClassifierEntry] = {}
        self._started = False
        # How chat requests' images are read (the limits, remote fetching, the Files API).
        self.images = images or ImageLoader()

    def load(
        self,
        spec: ModelSpec,
        on_progress: Callable[[int, int], None] | None = None,
        engine_config: EngineConfig | None = None,
    ) -> str:
        """Loads a model (blocking) and returns the name it is served under."""
        if spec.resolved_kind == "embedding":
            model = EmbeddingModel.from_path(spec.path)
            entry: ChatModel | EmbeddingEntry = EmbeddingEntry(spec.name or model.name, model, spec.path)
        else:
            # Each engine owns its config (it records the KV-cache size it chose).
            config = dataclasses.replace(engine_config) if engine_config else None
            engine = AsyncEngine.from_path(spec.path, config, on_progress=on_progress)
            tokenizer = engine.tokenizer
            entry = ChatModel(
                spec.name or engine.name,
                engine,
                GrammarCompiler(tokenizer),
                FIMFormat.detect(tokenizer),
                # mistral-common places tools itself, for the versions that have tool tokens.
                tokenizer.tool_call_format != "hermes" or template_handles_tools(tokenizer),
                spec.path,
            )
        self.add(entry)
        return entry.name

    def add(self, entry: ChatModel | EmbeddingEntry | ClassifierEntry) -> None:
        if entry.name in self._models:
            raise ValueError(f"two models are named {entry.name!r}; name one with NAME=PATH")
        self._models[entry.name] = entry

    async def add_adapter(
        self, model_id: str, base_model: str, path: str, *, job: str | None = None, workspace_id: str | None = None
    ) -> ChatModel:
        """Serves the PEFT LoRA adapter in `path` as `model_id`, on `base_model`'s engine
        (batched with every other request to it). `workspace_id`: the only workspace
        that sees it (None: all). ModelLoadError if the adapter does not fit the base."""
        if model_id in self._models:
            raise ValueError(f"a model named {model_id!r} is already served")
        base = self._get(base_model)
        if not isinstance(base, ChatModel) or base.adapter is not None:
            raise ValueError(f"{base_model!r} is not a base chat model")
        await base.engine.add_lora(model_id, path)
        entry = dataclasses.replace(
            base,
            name=model_id,
            created=int(time.time()),
            adapter=Adapter(root=base.name, job=job),
            workspace_id=workspace_id,
        )
        self.add(entry)
        return entry

    async def remove_adapter(self, model_id: str) -> None:
        """Stops serving an adapter; requests already running on it finish."""
        entry = self._get(model_id)
        if not isinstance(entry, ChatModel) or entry.adapter is None:
            raise ValueError(f"{model_id!r} is not a LoRA adapter")
        del self._models[model_id]
        await entry.engine.remove_lora(model_id)

    def chat(self, name: str, workspace_id: str | None = None) -> ChatModel:
        """The chat model `name` as the caller of `workspace_id` sees it (None: an
        internal caller, who sees every model); another workspace's answers 404."""
        entry = self._get(name, workspace_id)
        if not isinstance(entry, ChatModel):
            raise Invalid(f"The model '{name}' is not a chat model and cannot generate text",
                          code="model_not_supported", param="model")
        return entry

    def embedding(self, name: str) -> EmbeddingEntry:
        entry = self._get(name)
        if not isinstance(entry, EmbeddingEntry):
            raise Invalid(f"The model '{name}' is not an embedding model", code="model_not_supported", param="model")
        return entry

    def classifier(self, name: str, workspace_id: str | None = None) -> ClassifierEntry:
        """The classifier `name` as the caller of `workspace_id` sees it."""
        entry = self._get(name, workspace_id)
        if not isinstance(entry, ClassifierEntry):
            raise Invalid(f"The model '{name}' is not a classifier", code="model_not_supported", param="model")
        return entry

    def add_classifier(
        self, model_id: str, embedding_model: str, path: str, *, job: str | None = None, workspace_id: str | None = None
    ) -> ClassifierEntry:
        """Serves the classifier head saved in `path` (a classifier job's) as
        `model_id`, over `embedding_model`, to `workspace_id` only (None: all)."""
        if model_id in self._models:
            raise ValueError(f"a model named {model_id!r} is already served")
        base = self.embedding(embedding_model)
        entry = ClassifierEntry(
            model_id,
            base.name,
            base.model.max_seq_len,
            saved_head(Path(path)),
            description=f"Classifier fine-tuned over {base.name}, served by Tramontane",
            root=base.name,
            workspace_id=workspace_id,
            job=job,
        )
        self.add(entry)
        return entry

    def remove_classifier(self, model_id: str) -> None:
        if not isinstance(self._get(model_id), ClassifierEntry):
            raise ValueError(f"{model_id!r} is not a classifier")
        del self._models[model_id]

    def has_embedding(self) -> bool:
        return any(isinstance(entry, EmbeddingEntry) for entry in self._models.values())

    def default_embedding(self) -> EmbeddingEntry:
        """The first embedding model loaded: what document libraries embed with."""
        for entry in self._models.values():
            if isinstance(entry, EmbeddingEntry):
                return entry
        raise Unavailable("No embedding model is loaded", code="no_embedding_model")

    def entry(self, name: str, workspace_id: str | None = None) -> ChatModel | EmbeddingEntry | ClassifierEntry:
        """The model `name` as the caller of `workspace_id` sees it; 404 for another's."""
        return self._get(name, workspace_id)

    def card(self, name: str, workspace_id: str | None = None) -> ModelCard:
        return self._get(name, workspace_id).card()

    def cards(self, workspace_id: str | None = None) -> list[ModelCard]:
        return [entry.card() for entry in self._models.values() if _visible(entry, workspace_id)]

    def names(self) -> list[str]:
        """The models every workspace sees (an unauthenticated probe lists these)."""
        return [name for name, entry in self._models.items() if _owner(entry) is None]

    def embedding_checkpoints(self) -> dict[str, str]:
        """The embedding models loaded from a folder, by name: what classifier jobs train on."""
        return {e.name: e.path for e in self._models.values() if isinstance(e, EmbeddingEntry) and e.path}

    def checkpoints(self) -> dict[str, str]:
        """The base chat models loaded from a checkpoint, by name: the paths fine-tuning trains on."""
        chat = (entry for entry in self._models.values() if isinstance(entry, ChatModel) and entry.adapter is None)
        return {entry.name: entry.path for entry in chat if entry.path}

    def engines(self) -> Iterator[tuple[str, AsyncEngine]]:
        """Each engine once, under its base model's name (adapters share it)."""
        for entry in self._models.values():
            if isinstance(entry, ChatModel) and entry.adapter is None:
                yield entry.name, entry.engine

    @property
    def ready(self) -> bool:
        return self._started and all(engine.dead is None for _, engine in self.engines())

    async def start(self) -> None:
        for _, engine in self.engines():
            await engine.start()
        self._started = True

    async def shutdown(self) -> None:
        self._started = False
        for _, engine in self.engines():
            await engine.shutdown()

    def _get(self, name: str, workspace_id: str | None = None) -> ChatModel | EmbeddingEntry | ClassifierEntry:
        entry = self._models.get(name)
        if entry is None or not _visible(entry, workspace_id):
            raise NotFound(f"The model '{name}' does not exist", code="model_not_found", param="model")
        return entry


def _owner(entry: ChatModel | EmbeddingEntry | ClassifierEntry) -> str | None:
    return entry.workspace_id if isinstance(entry, ChatModel | ClassifierEntry) else None


def _visible(entry: ChatModel | EmbeddingEntry | ClassifierEntry, workspace_id: str | None) -> bool:
    owner = _owner(entry)
    return owner is None or workspace_id is None or owner == workspace_id
