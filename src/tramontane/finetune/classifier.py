"""Classifier training: Mistral's classifier dataset, and a linear head fitted on an
embedding model's vectors of its texts.

A dataset line is `{"text": "...", "labels": {"target": "label"}}` (one label per
target: softmax) or `{"labels": {"target": ["a", "b"]}}` (any number, an empty list
included: sigmoids); `{"messages": [...]}` may stand for `text`, its turns joined."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..inference.classifiers import ClassifierHead, Target
from .dataset import DatasetError

Labels = dict[str, list[str]]
MAX_LABELS_PER_TARGET = 256
MAX_TARGETS = 16


@dataclass(frozen=True)
class LabelledText:
    text: str
    labels: Labels  # target -> its labels (one, for a single-label target)
    line: int


def parse_classifier_jsonl(data: bytes, filename: str) -> list[LabelledText]:
    """The file's examples; DatasetError listing every bad line by number."""
    examples: list[LabelledText] = []
    errors: list[str] = []
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            examples.append(_example(json.loads(raw), number))
        except (ValueError, TypeError) as exc:
            errors.append(f"{filename}: line {number}: {exc}")
    if not examples and not errors:
        errors.append(f"{filename}: no examples")
    if errors:
        raise DatasetError(errors)
    return examples


def _example(record: object, number: int) -> LabelledText:
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")
    text = record.get("text")
    if text is None and isinstance(record.get("messages"), list):
        text = "\n".join(str(m.get("content", "")) for m in record["messages"] if isinstance(m, dict))
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'text' (or 'messages') must be a non-empty string")
    labels = record.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError("'labels' must be an object of target name to label(s)")
    parsed: Labels = {}
    for target, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"target '{target}': labels must be non-empty strings")
        parsed[str(target)] = values
    return LabelledText(text, parsed, number)


def targets_of(examples: list[LabelledText]) -> list[Target]:
    """The targets and their labels, in first-seen order; a target is multi-label when
    any example gives it a list. Raises DatasetError for a dataset it cannot train."""
    labels: dict[str, dict[str, None]] = {}
    multi: dict[str, bool] = {}
    raw_lists: dict[str, bool] = {}
    for example in examples:
        for target, values in example.labels.items():
            labels.setdefault(target, {}).update(dict.fromkeys(values))
            raw_lists[target] = raw_lists.get(target, False) or len(values) != 1
    errors = []
    for target, seen in labels.items():
        multi[target] = raw_lists[target]
        if len(seen) > MAX_LABELS_PER_TARGET:
            errors.append(f"target '{target}' has {len(seen)} labels; at most {MAX_LABELS_PER_TARGET}")
        if not multi[target] and len(seen) < 2:
            errors.append(f"target '{target}' has a single label; a classifier needs two or more")
    if len(labels) > MAX_TARGETS:
        errors.append(f"{len(labels)} targets; at most {MAX_TARGETS}")
    if errors:
        raise DatasetError(errors)
    return [Target(name, tuple(seen), multi[name]) for name, seen in labels.items()]


@dataclass(frozen=True)
class FitSettings:
    steps: int = 300
    learning_rate: float = 0.05
    weight_decay: float = 1e-4
    seed: int = 0


def fit_head(
    vectors: np.ndarray,
    examples: list[LabelledText],
    targets: list[Target],
    embedding_model: str,
    max_seq_len: int,
    settings: FitSettings = FitSettings(),
    on_step: Callable[[int, float], bool] | None = None,
    weights: list[float] | None = None,
) -> ClassifierHead:
    """A head fitted by full-batch Adam on `vectors` (one per example): binary
    cross-entropy for multi-label targets, cross-entropy for the others; examples
    without a label for a target do not count for it; `weights` scale each target's
    loss. `on_step(step, loss)` returning False stops the fit (a cancelled job)."""
    torch.manual_seed(settings.seed)
    x = torch.as_tensor(vectors, dtype=torch.float32)
    width = sum(len(t.labels) for t in targets)
    weight = torch.zeros(x.shape[1], width, requires_grad=True)
    bias = torch.zeros(width, requires_grad=True)
    losses = [_target_loss(target, examples) for target in targets]
    scales = weights or [1.0] * len(targets)
    optimizer = torch.optim.AdamW([weight, bias], lr=settings.learning_rate, weight_decay=settings.weight_decay)
    for step in range(1, settings.steps + 1):
        optimizer.zero_grad()
        logits = x @ weight + bias
        start, total = 0, torch.zeros(())
        for target, loss, scale in zip(targets, losses, scales):
            total = total + scale * loss(logits[:, start : start + len(target.labels)])
            start += len(target.labels)
        total.backward()
        optimizer.step()
        if on_step is not None and not on_step(step, float(total.detach())):
            break
    return ClassifierHead(targets, embedding_model, max_seq_len, weight.detach().clone(), bias.detach().clone())


def _target_loss(target: Target, examples: list[LabelledText]) -> Callable[[torch.Tensor], torch.Tensor]:
    index = {label: i for i, label in enumerate(target.labels)}
    has = torch.tensor([target.name in e.labels for e in examples])
    if target.multi_label:
        y = torch.zeros(len(examples), len(target.labels))
        for row, example in enumerate(examples):
            for label in example.labels.get(target.name, []):
                y[row, index[label]] = 1.0
        # Positives are rare in moderation data: weigh them up to balance each label.
        positives = y[has].sum(0).clamp(min=1)
        pos_weight = ((has.sum() - positives) / positives).clamp(min=1.0)
        bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        return lambda logits: bce(logits[has], y[has])
    y = torch.tensor([index[e.labels[target.name][0]] if target.name in e.labels else 0 for e in examples])
    ce = torch.nn.CrossEntropyLoss()
    return lambda logits: ce(logits[has], y[has])
