"""Precision and recall of the default moderation model on the held-out set the
tests ship (tests/data/moderation_heldout.jsonl), per category and micro-averaged.

    python benchmarks/moderation_quality.py [--threshold 0.5]

Trains the head from the packaged set (as the server does on first use) in a
temporary cache, then scores each held-out text: a category is predicted when its
score reaches the threshold (the server's `categories[c]`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from tramontane.engine.defaults import DEFAULT_EMBEDDING_MODEL_NAME, default_embedding_model_path
from tramontane.engine.embedding import EmbeddingModel
from tramontane.finetune.moderation import CATEGORIES, MODERATION_TARGET, moderation_classifier
from tramontane.inference.classifiers import embed
from tramontane.inference.registry import EmbeddingEntry

HELDOUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "moderation_heldout.jsonl"


def heldout() -> list[tuple[str, set[str]]]:
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    return [(row["text"], set(row["labels"][MODERATION_TARGET])) for row in rows]


async def evaluate(threshold: float) -> dict:
    embedding = EmbeddingEntry(DEFAULT_EMBEDDING_MODEL_NAME, EmbeddingModel.from_path(default_embedding_model_path()))
    with tempfile.TemporaryDirectory() as cache:
        head = await moderation_classifier(embedding, Path(cache)).head()
    examples = heldout()
    vectors, _ = await embed(embedding, [text for text, _ in examples])
    predicted = [
        {c for c, s in scores[MODERATION_TARGET].items() if s >= threshold} for scores in head.scores(vectors)
    ]
    report: dict = {"n": len(examples), "threshold": threshold, "categories": {}}
    tp_all = fp_all = fn_all = 0
    for category in CATEGORIES:
        tp = sum(category in p and category in t for p, (_, t) in zip(predicted, examples))
        fp = sum(category in p and category not in t for p, (_, t) in zip(predicted, examples))
        fn = sum(category not in p and category in t for p, (_, t) in zip(predicted, examples))
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
        report["categories"][category] = {
            "positives": tp + fn,
            "precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "recall": round(tp / (tp + fn), 3) if tp + fn else None,
        }
    report["micro_precision"] = round(tp_all / (tp_all + fp_all), 3) if tp_all + fp_all else None
    report["micro_recall"] = round(tp_all / (tp_all + fn_all), 3) if tp_all + fn_all else None
    safe = [p for p, (_, t) in zip(predicted, examples) if not t]
    report["safe_texts"] = len(safe)
    report["safe_flagged"] = sum(bool(p) for p in safe)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=float, default=0.5)
    print(json.dumps(asyncio.run(evaluate(parser.parse_args().threshold)), indent=1))


if __name__ == "__main__":
    main()
