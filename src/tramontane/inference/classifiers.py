"""Classifier models: a linear head over an embedding model's pooled hidden states.

A head has one or more targets (Mistral's classifier shape): a single-label target
scores its labels with a softmax, a multi-label one (moderation) each label with a
sigmoid. The head is trained by a fine-tuning job (finetune/classifier.py) or, for
the default moderation model, from the labelled set the package ships; it is saved
as safetensors beside a JSON description of its targets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .protocol import FineTunedModelCard, ModelCapabilities, ModelCard

if TYPE_CHECKING:
    from .registry import EmbeddingEntry

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"


@dataclass(frozen=True)
class Target:
    name: str
    labels: tuple[str, ...]
    multi_label: bool  # each label scored on its own (sigmoid); else one of them (softmax)


@dataclass
class ClassifierHead:
    targets: list[Target]
    embedding_model: str  # the model whose vectors it reads
    max_seq_len: int  # the embedding model's, reported on the card
    weight: torch.Tensor  # (dim, number of labels over all targets)
    bias: torch.Tensor  # (number of labels,)

    def scores(self, vectors: np.ndarray | torch.Tensor) -> list[dict[str, dict[str, float]]]:
        """For each vector, each target's score for each of its labels."""
        logits = torch.as_tensor(vectors, dtype=torch.float32) @ self.weight + self.bias
        results: list[dict[str, dict[str, float]]] = [{} for _ in range(logits.shape[0])]
        start = 0
        for target in self.targets:
            part = logits[:, start : start + len(target.labels)]
            start += len(target.labels)
            probabilities = torch.sigmoid(part) if target.multi_label else torch.softmax(part, dim=-1)
            for row, values in zip(results, probabilities.tolist()):
                row[target.name] = {label: round(value, 6) for label, value in zip(target.labels, values)}
        return results

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, folder / HEAD_WEIGHTS)
        config = {
            "embedding_model": self.embedding_model,
            "max_seq_len": self.max_seq_len,
            "targets": [{"name": t.name, "labels": list(t.labels), "multi_label": t.multi_label} for t in self.targets],
        }
        (folder / HEAD_CONFIG).write_text(json.dumps(config, indent=1))

    @classmethod
    def load(cls, folder: Path) -> ClassifierHead:
        config = json.loads((folder / HEAD_CONFIG).read_text())
        tensors = load_file(folder / HEAD_WEIGHTS)
        targets = [Target(t["name"], tuple(t["labels"]), t["multi_label"]) for t in config["targets"]]
        return cls(targets, config["embedding_model"], config["max_seq_len"], tensors["weight"], tensors["bias"])


HeadLoader = Callable[[], Awaitable[ClassifierHead]]


@dataclass
class ClassifierEntry:
    """A classifier served by name. Its head is loaded (or trained) on first use by
    `loader`, once, however many requests wait for it."""

    name: str
    embedding_model: str  # the served embedding model its head reads
    max_context_length: int
    loader: HeadLoader
    description: str
    root: str | None = None  # fine-tuned: the base it was trained on
    workspace_id: str | None = None  # the workspace that owns it; None: every workspace's
    job: str | None = None  # the fine-tuning job that made it
    created: int = field(default_factory=lambda: int(time.time()))
    _head: ClassifierHead | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def head(self) -> ClassifierHead:
        if self._head is None:
            async with self._lock:
                if self._head is None:
                    self._head = await self.loader()
        return self._head

    def card(self) -> ModelCard:
        fields = {
            "id": self.name,
            "created": self.created,
            "name": self.name,
            "description": self.description,
            "capabilities": ModelCapabilities(classification=True),
            "max_context_length": self.max_context_length,
        }
        if self.job is not None:
            root = self.root or self.embedding_model
            return FineTunedModelCard(**fields, job=self.job, root=root, parent=root)
        return ModelCard(**fields)


def saved_head(folder: Path) -> HeadLoader:
    async def load() -> ClassifierHead:
        return await anyio.to_thread.run_sync(ClassifierHead.load, folder)

    return load


async def embed(entry: EmbeddingEntry, texts: list[str]) -> tuple[np.ndarray, int]:
    """`texts`' vectors (truncated to the model's length) and their token count."""
    async with entry.lock:  # one forward pass at a time, as /v1/embeddings does
        vectors, counts = await anyio.to_thread.run_sync(entry.model.embed, texts)
    return vectors.numpy(), sum(counts)
