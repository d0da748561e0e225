"""How an answer is scored: each metric gives a score in [0, 1] (None when it
cannot apply, e.g. an item without a reference).

Deterministic metrics run here; embedding similarity and the LLM judge call a
served model through `Scorers` (calls.py), whose verdict is constrained by a
JSON schema so that it always parses."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import jsonschema
import sacrebleu

from ..errors import Invalid
from .schemas import Metric

NEEDS_REFERENCE = frozenset({"exact_match", "normalized_match", "bleu", "chrf", "embedding_similarity"})
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
        "reason": {"type": "string", "maxLength": 300},
    },
    "required": ["score", "reason"],
    "additionalProperties": False,
}

JUDGE_INSTRUCTIONS = (
    "You grade an assistant's answer against a rubric. Score from 1 (fails the rubric) to 5 "
    "(fully meets it) and give a one-sentence reason. Answer with JSON only."
)


def check(metric: Metric) -> None:
    """Raises Invalid for a metric whose settings cannot work (before the job starts)."""
    if metric.type == "regex":
        try:
            re.compile(metric.pattern or "")
        except re.error as exc:
            raise Invalid(f"metric regex: bad pattern: {exc}", param="metrics") from None
    if metric.type == "json_schema":
        try:
            jsonschema.validators.validator_for(metric.json_schema).check_schema(metric.json_schema)
        except jsonschema.SchemaError as exc:
            raise Invalid(f"metric json_schema: bad schema: {exc.message}", param="metrics") from None


def normalize(text: str) -> str:
    """Lower case, without punctuation, articles or extra spaces (SQuAD's normalisation)."""
    text = text.lower()
    text = "".join(c for c in text if c not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def parse_json(answer: str) -> Any:
    text = answer.strip()
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)


def deterministic(metric: Metric, answer: str, reference: str | None) -> float | None:
    """The score of a metric that needs no model."""
    if metric.type in NEEDS_REFERENCE and reference is None:
        return None
    if metric.type == "exact_match":
        return float(answer.strip() == (reference or "").strip())
    if metric.type == "normalized_match":
        return float(normalize(answer) == normalize(reference or ""))
    if metric.type == "regex":
        return float(re.search(metric.pattern or "", answer) is not None)
    if metric.type == "json_schema":
        try:
            jsonschema.validate(parse_json(answer), metric.json_schema or {})
        except (ValueError, jsonschema.ValidationError):
            return 0.0
        return 1.0
    if metric.type == "bleu":
        return _unit(sacrebleu.sentence_bleu(answer, [reference or ""]).score)
    if metric.type == "chrf":
        return _unit(sacrebleu.sentence_chrf(answer, [reference or ""]).score)
    raise ValueError(f"{metric.type} needs a model")


def corpus(metric: Metric, answers: list[str], references: list[str]) -> float | None:
    """BLEU and chrF over the whole set, as papers report them (beside the mean of sentence scores)."""
    if not answers:
        return None
    if metric.type == "bleu":
        return _unit(sacrebleu.corpus_bleu(answers, [references]).score)
    if metric.type == "chrf":
        return _unit(sacrebleu.corpus_chrf(answers, [references]).score)
    return None


def _unit(percent: float) -> float:
    """sacrebleu's 0-100 score as 0-1 (its float sums can land a hair past 100)."""
    return min(1.0, max(0.0, percent / 100))


def judge_messages(rubric: str, messages: list[dict[str, str]], answer: str, reference: str | None) -> list[dict]:
    question = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    parts = [f"Rubric: {rubric}", f"Conversation:\n{question}", f"Answer to grade:\n{answer}"]
    if reference is not None:
        parts.insert(2, f"Reference answer:\n{reference}")
    return [{"role": "system", "content": JUDGE_INSTRUCTIONS}, {"role": "user", "content": "\n\n".join(parts)}]


def judge_score(verdict: dict[str, Any]) -> float:
    return (int(verdict["score"]) - 1) / 4
