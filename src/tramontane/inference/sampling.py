"""Turning request fields into engine `SamplingParams`, and engine finish reasons back."""

from __future__ import annotations

from collections.abc import Callable

from ..engine import InvalidRequestError, SamplingParams, TokenConstraint
from .protocol import SamplingFields
from .registry import DEFAULT_TEMPERATURE


def sampling_params(
    req: SamplingFields,
    *,
    n: int | None = None,
    max_tokens: int | None = None,
    logprobs: int | None = None,
    constraint_factory: Callable[[], TokenConstraint] | None = None,
    lora: str | None = None,
) -> SamplingParams:
    """Raises InvalidRequestError (a 400) for out-of-range values."""
    seed = req.seed if req.seed is not None else req.random_seed
    if seed is not None:
        if not -(2**63) <= seed < 2**64:
            raise InvalidRequestError("seed must fit in 64 bits", param="seed")
        seed %= 2**64  # OpenAI allows negative (int64) seeds; the generator takes unsigned ones
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return SamplingParams(
        n=1 if n is None else n,
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=seed,
        max_tokens=max_tokens,
        min_tokens=req.min_tokens or 0,
        stop=stop,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        logprobs=logprobs,
        constraint_factory=constraint_factory,
        lora=lora,
    )


def finish_reason(reason: str | None) -> str | None:
    """The engine's reason in API terms: "abort" only reaches a client whose request
    the server gave up on, so it reads as an error."""
    return reason if reason in (None, "stop", "length") else "error"
