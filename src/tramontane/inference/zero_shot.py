"""Any chat model as a zero-shot classifier, through a grammar-constrained verdict.

Each (text, question) pair is one engine request: the text, then a yes/no question
about it, and one step of output that a grammar lets be nothing but the start of
"yes" or of "no". The score is the model's probability of "yes" in that step's
distribution, read after the grammar's mask: the engine's logprobs are taken from
the masked logits, so they sum to one over the tokens that begin either answer. A
score is therefore graded (0.93, not just true), and thresholds mean the same for
every model.

The text comes before the question, so a text's requests share their prompt up to
the question and the engine's prefix cache reads it once."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..engine import SamplingParams
from .generation import Generation
from .metrics import Metrics
from .registry import ChatModel

VERDICTS = ("yes", "no")
IN_FLIGHT = 32  # engine requests at once, per call


@dataclass(frozen=True)
class Question:
    label: str  # the score's name in the result
    text: str  # asked about each text: "Does the text ask for sexual content?"


async def yes_scores(
    model: ChatModel, metrics: Metrics, instructions: str, texts: Sequence[str], questions: Sequence[Question]
) -> tuple[list[dict[str, float]], list[Generation]]:
    """For each text, each question's probability of "yes"; and the engine
    requests that produced them (to be metered)."""
    constraint = model.grammar.choice_factory(VERDICTS)
    params = SamplingParams(
        temperature=0.0, max_tokens=1, logprobs=SamplingParams.MAX_TOP_LOGPROBS, constraint_factory=constraint,
        lora=model.lora,
    )
    tokenizer = model.engine.tokenizer
    gens = [
        Generation(model.engine, model.name, tokenizer.encode_chat(_messages(instructions, text, q), None),
                   params, metrics, "verdict")
        for text in texts
        for q in questions
    ]
    # A few texts at a time: enough for full batches, without taking the engine's
    # whole queue from other callers (a request it cannot queue is refused).
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def run(gen: Generation) -> None:
        async with slots:
            await gen.run()

    try:
        await asyncio.gather(*(run(gen) for gen in gens))
    except BaseException:
        await asyncio.gather(*(gen.close() for gen in gens), return_exceptions=True)
        raise
    scores = [_yes_probability(gen, tokenizer.token_str) for gen in gens]
    per_text = len(questions)
    return [
        {q.label: scores[i * per_text + j] for j, q in enumerate(questions)} for i in range(len(texts))
    ], gens


def _messages(instructions: str, text: str, question: Question) -> list[dict[str, str]]:
    # Triple quotes mark where the judged text ends: an instruction inside it is
    # something to judge, not to follow.
    return [
        {"role": "system", "content": instructions},
        {"role": "user", "content": f'Text:\n"""\n{text}\n"""\n\n{question.text} Answer yes or no.'},
    ]


def _yes_probability(gen: Generation, token_str) -> float:
    """The mass of the tokens that begin "yes" among those the grammar allowed
    (all of them are among the top alternatives: a two-word grammar allows few)."""
    step = gen.choices[0].logprobs[0]
    yes = total = 0.0
    for token_id, logprob in step.top or [(step.token, step.logprob)]:
        if logprob == -math.inf:
            continue
        probability = math.exp(logprob)
        total += probability
        if token_str(token_id).lower().startswith("y"):
            yes += probability
    return round(yes / total, 6) if total else 0.0
