"""Per-request generation settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .errors import InvalidRequestError


class TokenConstraint(Protocol):
    """Constrained decoding state for one sequence (e.g. a JSON-schema grammar).

    The sampler calls `allowed_tokens` before sampling each token and `accept`
    after; a constraint that `is_finished` forces the end of the sequence.
    """

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        """A bool tensor [vocab_size], True where the token may come next."""
        ...

    def accept(self, token_id: int) -> None: ...

    def is_finished(self) -> bool: ...


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None  # None: EngineConfig.default_max_tokens, within the context
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # None: no logprobs; k >= 0: logprob of the sampled token plus the top k.
    logprobs: int | None = None
    # Builds one fresh constraint per sequence (n > 1 gives n independent states).
    constraint_factory: Callable[[], TokenConstraint] | None = None
    # Name of a LoRA adapter added with LLMEngine.add_lora; None runs the base model.
    lora: str | None = None

    MAX_TOP_LOGPROBS = 20
    MAX_N = 16

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    def validate(self) -> None:
        def bad(msg: str, param: str) -> None:
            raise InvalidRequestError(msg, param=param)

        if not 1 <= self.n <= self.MAX_N:
            bad(f"n must be between 1 and {self.MAX_N}, got {self.n}", "n")
        if not 0.0 <= self.temperature <= 2.0:
            bad(f"temperature must be between 0 and 2, got {self.temperature}", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k < 0:
            bad(f"top_k must be >= 0, got {self.top_k}", "top_k")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        if self.max_tokens is not None and self.max_tokens < 1:
            bad(f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens")
        if self.min_tokens < 0:
            bad(f"min_tokens must be >= 0, got {self.min_tokens}", "min_tokens")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})", "min_tokens")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                bad(f"{name} must be between -2 and 2", name)
        if not 0.01 <= self.repetition_penalty <= 10.0:
            bad("repetition_penalty must be between 0.01 and 10", "repetition_penalty")
        if self.logprobs is not None and not 0 <= self.logprobs <= self.MAX_TOP_LOGPROBS:
            bad(f"top_logprobs must be between 0 and {self.MAX_TOP_LOGPROBS}", "top_logprobs")
        if len(self.stop) > 16 or any(not s for s in self.stop):
            bad("stop must hold at most 16 non-empty strings", "stop")
