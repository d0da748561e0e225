"""The default moderation model: a classifier head with Mistral's moderation
categories, trained on first use from the labelled set shipped here (train.jsonl:
short English requests, each labelled with the categories it falls in, or none)
over the server's embedding model, and cached on disk under the platform's home.

It is a small supervised classifier, not a safety model: it recognises requests
that resemble its training examples. Its precision and recall on a held-out set are
in docs/benchmarks.md; fine-tune a classifier (job_type "classifier") on your own
labelled data for anything that matters."""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import resources
from pathlib import Path

import anyio.to_thread

from ...inference.classifiers import HEAD_CONFIG, ClassifierEntry, ClassifierHead, Target, embed
from ...inference.registry import EmbeddingEntry
from ..classifier import FitSettings, LabelledText, fit_head, parse_classifier_jsonl

MODERATION_MODEL = "tramontane-moderation"
MODERATION_TARGET = "moderation"
# Mistral's moderation categories, in the order its API lists them.
CATEGORIES = (
    "sexual",
    "hate_and_discrimination",
    "violence_and_threats",
    "dangerous_and_criminal_content",
    "selfharm",
    "health",
    "financial",
    "law",
    "pii",
)
SETTINGS = FitSettings(steps=300, learning_rate=0.05, weight_decay=1e-4, seed=0)


def training_data() -> bytes:
    return resources.files(__package__).joinpath("train.jsonl").read_bytes()


def training_set() -> list[LabelledText]:
    return parse_classifier_jsonl(training_data(), "train.jsonl")


def moderation_classifier(embedding: EmbeddingEntry, cache: Path) -> ClassifierEntry:
    """The default moderation model over `embedding`; its head is trained on first
    use (seconds: one embedding pass over the set) and kept in `cache`, keyed by the
    data, the embedding model and the settings, so a restart loads it."""
    key = hashlib.sha256(training_data() + embedding.name.encode() + repr(SETTINGS).encode()).hexdigest()[:16]
    folder = cache / key

    async def load() -> ClassifierHead:
        if (folder / HEAD_CONFIG).exists():
            return await anyio.to_thread.run_sync(ClassifierHead.load, folder)
        examples = training_set()
        vectors, _ = await embed(embedding, [example.text for example in examples])
        targets = [Target(MODERATION_TARGET, CATEGORIES, multi_label=True)]
        head = await anyio.to_thread.run_sync(
            lambda: fit_head(vectors, examples, targets, embedding.name, embedding.model.max_seq_len, SETTINGS)
        )
        await anyio.to_thread.run_sync(_save, head, folder)
        return head

    return ClassifierEntry(
        MODERATION_MODEL,
        embedding.name,
        embedding.model.max_seq_len,
        load,
        description=f"Moderation classifier ({', '.join(CATEGORIES)}) over {embedding.name}, served by Tramontane",
    )


def _save(head: ClassifierHead, folder: Path) -> None:
    """Written beside, then renamed: a crash mid-write leaves no half head to load."""
    partial = folder.with_name(folder.name + f".{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    head.save(partial)
    try:
        partial.rename(folder)
    except OSError:  # another process saved it first
        shutil.rmtree(partial, ignore_errors=True)
