"""What the engine streams back for each request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    # Top alternatives as (token_id, logprob), best first; empty unless asked for.
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    """One of the n sequences of a request, as of the latest step."""

    index: int
    text: str = ""  # cumulative, stop strings removed
    token_ids: list[int] = field(default_factory=list)  # cumulative
    delta_text: str = ""  # new since the previous RequestOutput
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[TokenLogprob] = field(default_factory=list)
    # None while running; "stop" | "length" | "abort" | "error" once finished.
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the stop string or token that matched

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache
    error: str | None = None
