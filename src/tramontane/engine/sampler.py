"""Turns a batch of logits into next tokens, one sequence's settings per row.

Order of operations follows the OpenAI/vLLM semantics: grammar and min_tokens
masks, then penalties, then log-probabilities (of the penalised distribution,
before temperature), then temperature, top-k, top-p and min-p, then a draw.
Each seeded sequence draws from its own generator, so its output does not depend
on what else shares the batch.
"""

from __future__ import annotations

import torch

from .outputs import TokenLogprob
from .sequence import Sequence


def _apply_masks(logits: torch.Tensor, seqs: list[Sequence], eos_ids: list[int]) -> None:
    vocab = logits.shape[1]
    for row, seq in enumerate(seqs):
        p = seq.params
        if seq.constraint is not None:
            allowed = seq.constraint.allowed_tokens(vocab)
            logits[row].masked_fill_(~allowed.to(logits.device), float("-inf"))
        if seq.num_output_tokens < p.min_tokens:
            banned = ([] if p.ignore_eos else eos_ids) + p.stop_token_ids
            if banned:
                logits[row, banned] = float("-inf")


def _apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    rows = [
        i
        for i, s in enumerate(seqs)
        if s.params.presence_penalty or s.params.frequency_penalty or s.params.repetition_penalty != 1.0
    ]
    vocab = logits.shape[1]
    for row in rows:
        seq, p = seqs[row], seqs[row].params
        out = torch.tensor(seq.output_token_ids, dtype=torch.long)
        if p.repetition_penalty != 1.0:
            # CTRL-style: shrink the logit of every token already seen, prompt included.
            seen = torch.tensor(seq.token_ids, dtype=torch.long).unique()
            vals = logits[row, seen]
            logits[row, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if len(out) and (p.presence_penalty or p.frequency_penalty):
            counts = torch.bincount(out, minlength=vocab)[:vocab].to(logits.dtype)
            logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def _filter(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p; returns probabilities."""
    temps = torch.tensor([max(s.params.temperature, 1e-5) for s in seqs]).unsqueeze(1)
    logits = logits / temps
    top_ks = [s.params.top_k for s in seqs]
    top_ps = [s.params.top_p for s in seqs]
    if any(k > 0 for k in top_ks) or any(p < 1.0 for p in top_ps):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        vocab = logits.shape[1]
        ks = torch.tensor([k if k > 0 else vocab for k in top_ks]).unsqueeze(1)
        rank = torch.arange(vocab).unsqueeze(0)
        drop = rank >= ks
        probs = sorted_logits.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p (the token crossing it stays).
        mass_before = probs.cumsum(-1) - probs
        drop |= mass_before >= torch.tensor(top_ps).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    probs = logits.softmax(-1)
    min_ps = torch.tensor([s.params.min_p for s in seqs]).unsqueeze(1)
    if bool((min_ps > 0).any()):
        probs = probs.masked_fill(probs < min_ps * probs.max(-1, keepdim=True).values, 0.0)
    return probs


def _draw(probs: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """One token per row, token i with probability probs[i], by inverting each row's
    cumulative distribution at a uniform draw: one vectorised pass over the batch,
    where torch.multinomial costs milliseconds per row on a large vocabulary. A
    seeded sequence draws its row's number from its own generator."""
    cdf = probs.cumsum(-1)
    draws = torch.rand(len(seqs), 1)
    for j, seq in enumerate(seqs):
        if seq.generator is not None:
            draws[j] = torch.rand(1, generator=seq.generator)
    # right=True: the first token whose cumulative mass exceeds the draw, so never
    # one of probability 0 (its mass equals its predecessor's).
    tokens = torch.searchsorted(cdf, draws * cdf[:, -1:], right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)
    # Rounding can put a draw at the very top of the mass: the likeliest token then.
    rounded = probs.gather(1, tokens[:, None]).squeeze(1) == 0
    if bool(rounded.any()):
        tokens[rounded] = probs[rounded].argmax(-1)
    return tokens


@torch.inference_mode()
def sample(
    logits: torch.Tensor, seqs: list[Sequence], eos_ids: list[int]
) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [len(seqs), vocab] f32 (modified in place)."""
    _apply_masks(logits, seqs, eos_ids)
    _apply_penalties(logits, seqs)
    want_logprobs = any(s.params.logprobs is not None for s in seqs)
    logprobs = logits.log_softmax(-1) if want_logprobs else None

    tokens = logits.argmax(-1)
    sampled_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if sampled_rows:
        sub = [seqs[i] for i in sampled_rows]
        probs = _filter(logits[sampled_rows], sub)
        tokens[sampled_rows] = _draw(probs, sub)
    token_list = tokens.tolist()

    out: list[TokenLogprob | None] = []
    for row, seq in enumerate(seqs):
        k = seq.params.logprobs
        if k is None or logprobs is None:
            out.append(None)
            continue
        tok = token_list[row]
        top: list[tuple[int, float]] = []
        if k > 0:
            vals, ids = logprobs[row].topk(k)
            top = list(zip(ids.tolist(), vals.tolist(), strict=True))
        out.append(TokenLogprob(tok, float(logprobs[row, tok]), top))
    return token_list, out
