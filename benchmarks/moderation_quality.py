"""Precision and recall of a moderation model on the held-out set the tests ship
(tests/data/moderation_heldout.jsonl), per category and micro-averaged.

    python benchmarks/moderation_quality.py [--threshold 0.5]
    python benchmarks/moderation_quality.py --chat-model [PATH]   (zero-shot verdicts)

By default, the default moderation model: its head is trained from the packaged set
(as the server does on first use) in a temporary cache. With --chat-model, a chat
model (the default one without a PATH) judges each text and category by a
grammar-constrained yes/no verdict, as the moderation routes do when named a chat
model. A category is predicted when its score reaches the threshold (the server's
`categories[c]`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import time

from tramontane.engine.defaults import (
    DEFAULT_EMBEDDING_MODEL_NAME,
    default_chat_model_path,
    default_embedding_model_path,
)
from tramontane.engine.embedding import EmbeddingModel
from tramontane.finetune.moderation import CATEGORIES, MODERATION_MODEL, MODERATION_TARGET, moderation_classifier
from tramontane.inference.classifiers import embed
from tramontane.inference.metrics import Metrics
from tramontane.inference.registry import EmbeddingEntry, ModelRegistry, ModelSpec
from tramontane.inference.zero_shot import yes_scores
from tramontane.server.classifiers import CATEGORY_QUESTIONS, MODERATOR_INSTRUCTIONS

HELDOUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "moderation_heldout.jsonl"


def heldout() -> list[tuple[str, set[str]]]:
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    return [(row["text"], set(row["labels"][MODERATION_TARGET])) for row in rows]


async def head_scores(texts: list[str]) -> tuple[str, list[dict[str, float]]]:
    embedding = EmbeddingEntry(DEFAULT_EMBEDDING_MODEL_NAME, EmbeddingModel.from_path(default_embedding_model_path()))
    with tempfile.TemporaryDirectory() as cache:
        head = await moderation_classifier(embedding, Path(cache)).head()
    vectors, _ = await embed(embedding, texts)
    return MODERATION_MODEL, [scores[MODERATION_TARGET] for scores in head.scores(vectors)]


async def verdict_scores(texts: list[str], path: str) -> tuple[str, list[dict[str, float]]]:
    registry = ModelRegistry()
    name = registry.load(ModelSpec.parse(path))
    model = registry.chat(name)
    await model.engine.start()
    try:
        scores, _ = await yes_scores(model, Metrics(registry), MODERATOR_INSTRUCTIONS, texts, CATEGORY_QUESTIONS)
    finally:
        await model.engine.shutdown()
    return name, scores


async def evaluate(threshold: float, chat_model: str | None, scores_out: Path | None = None) -> dict:
    examples = heldout()
    texts = [text for text, _ in examples]
    started = time.perf_counter()
    model, scores = await (verdict_scores(texts, chat_model) if chat_model else head_scores(texts))
    seconds = time.perf_counter() - started
    if scores_out:
        lines = [json.dumps({"text": text, "scores": row}) for text, row in zip(texts, scores)]
        scores_out.write_text("\n".join(lines) + "\n")
    predicted = [{c for c, s in row.items() if s >= threshold} for row in scores]
    report: dict = {"model": model, "n": len(examples), "threshold": threshold, "seconds": round(seconds, 1),
                    "categories": {}}
    tp_all = fp_all = fn_all = 0
    for category in CATEGORIES:
        tp = sum(category in p and category in t for p, (_, t) in zip(predicted, examples))
        fp = sum(category in p and category not in t for p, (_, t) in zip(predicted, examples))
        fn = sum(category not in p and category in t for p, (_, t) in zip(predicted, examples))
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
        report["categories"][category] = {
            "positives": tp + fn,
            "auc": auc([row[category] for row in scores], [category in t for _, t in examples]),
            "precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "recall": round(tp / (tp + fn), 3) if tp + fn else None,
        }
    report["micro_precision"] = round(tp_all / (tp_all + fp_all), 3) if tp_all + fp_all else None
    report["micro_recall"] = round(tp_all / (tp_all + fn_all), 3) if tp_all + fn_all else None
    report["micro_auc"] = auc(
        [row[c] for row in scores for c in CATEGORIES], [c in t for _, t in examples for c in CATEGORIES]
    )
    safe = [p for p, (_, t) in zip(predicted, examples) if not t]
    report["safe_texts"] = len(safe)
    report["safe_flagged"] = sum(bool(p) for p in safe)
    return report


def auc(scores: list[float], positive: list[bool]) -> float | None:
    """The area under the ROC curve: how often a positive text outscores a negative
    one (ties count half). 0.5 is no signal at all, whatever the threshold."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return None
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return round(wins / (len(pos) * len(neg)), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--chat-model", nargs="?", const=default_chat_model_path(), default=None,
                        help="judge by a chat model's verdicts (default: the default chat model)")
    parser.add_argument("--scores-out", type=Path, help="also write each text's scores there (JSONL)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(evaluate(args.threshold, args.chat_model, args.scores_out)), indent=1))


if __name__ == "__main__":
    main()
