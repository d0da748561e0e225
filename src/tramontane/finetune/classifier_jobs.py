"""Classifier fine-tuning jobs (Mistral's `job_type: "classifier"`): validation of
their labelled files against their targets, and their run in the training worker.

The base `model` is a served embedding model; the job embeds its texts once, fits
a head (finetune/classifier.py) over the vectors, full batch, and saves it where the
server loads it as the `ft:` classifier model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.embedding import EmbeddingModel
from ..inference.classifiers import Target
from .classifier import FitSettings, LabelledText, fit_head, parse_classifier_jsonl, targets_of
from .dataset import DatasetError
from .files import FileStore
from .models import FineTuningJobRow

DEFAULT_STEPS = 300
# A linear head over fixed vectors wants a far larger step than a LoRA adapter does
# (Mistral's 1e-4 default); used when the request sets none.
DEFAULT_LEARNING_RATE = 0.05
EMBED_BATCH = 64
CHECKPOINTS = 5


def read_examples(files: FileStore, workspace_id: str, file_id: str) -> list[LabelledText]:
    row = files.get(workspace_id, file_id)
    return parse_classifier_jsonl(files.read(row), row.filename)


def resolve_targets(job: FineTuningJobRow, examples: list[LabelledText]) -> list[dict[str, Any]]:
    """The job's targets: the declared ones (each label of the data must be declared),
    or those the data shows. DatasetError lists what does not fit."""
    seen = {t.name: t for t in targets_of(examples)}
    declared = job.classifier_targets
    if not declared:
        return [
            {
                "name": t.name,
                "labels": list(t.labels),
                "weight": 1.0,
                "loss_function": "multi_class" if t.multi_label else "single_class",
            }
            for t in seen.values()
        ]
    errors = []
    names = {d["name"] for d in declared}
    for name in seen.keys() - names:
        errors.append(f"the data labels target '{name}', which classifier_targets does not declare")
    resolved = []
    for target in declared:
        data = seen.get(target["name"])
        if data is None:
            errors.append(f"no example is labelled for target '{target['name']}'")
            continue
        unknown = sorted(set(data.labels) - set(target["labels"]))
        if unknown:
            errors.append(f"target '{target['name']}': labels {unknown} are not in its declared labels")
        multi = target.get("loss_function") == "multi_class" or (target.get("loss_function") is None and data.multi_label)
        if not multi and data.multi_label:
            errors.append(f"target '{target['name']}' is single_class but examples give it several labels")
        resolved.append({**target, "loss_function": "multi_class" if multi else "single_class"})
    if errors:
        raise DatasetError(errors)
    return resolved


def targets(job: FineTuningJobRow) -> list[Target]:
    return [
        Target(t["name"], tuple(t["labels"]), t["loss_function"] == "multi_class") for t in job.classifier_targets or []
    ]


def run_classifier_job(
    job: FineTuningJobRow,
    files: FileStore,
    embedding: EmbeddingModel,
    out: Path,
    should_stop: Callable[[], bool],
    on_checkpoint: Callable[[int, float], None],
) -> int | None:
    """Embeds the training texts, fits and saves the head in `out`; the number of
    tokens read, or None when stopped (cancelled, or the server stopping)."""
    examples = [e for f in job.training_files for e in read_examples(files, job.workspace_id, f["file_id"])]
    vectors, tokens = [], 0
    for start in range(0, len(examples), EMBED_BATCH):
        if should_stop():
            return None
        batch, counts = embedding.embed([e.text for e in examples[start : start + EMBED_BATCH]])
        vectors.append(batch)
        tokens += sum(counts)
    import torch  # the fit reads one matrix

    params = job.hyperparameters
    steps = params["training_steps"]
    every = max(1, steps // CHECKPOINTS)
    stopped = False

    def on_step(step: int, loss: float) -> bool:
        nonlocal stopped
        if step % every == 0 or step == steps:
            on_checkpoint(step, loss)
            if should_stop():
                stopped = True
                return False
        return True

    settings = FitSettings(steps=steps, learning_rate=params["learning_rate"], weight_decay=params["weight_decay"])
    weights = [t.get("weight", 1.0) for t in job.classifier_targets or []]
    head = fit_head(
        torch.cat(vectors).numpy(), examples, targets(job), job.model, embedding.max_seq_len, settings, on_step, weights
    )
    if stopped:
        return None
    head.save(out)
    return tokens
