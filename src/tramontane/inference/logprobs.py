"""Engine logprobs in the chat and the legacy completions shapes."""

from __future__ import annotations

from ..engine import Tokenizer, TokenLogprob
from .protocol import ChoiceLogprobs, CompletionLogprobs, TopLogprob
from .protocol import TokenLogprob as ChatTokenLogprob


def _top(tokenizer: Tokenizer, token_id: int, logprob: float) -> TopLogprob:
    return TopLogprob(
        token=tokenizer.token_str(token_id),
        logprob=logprob,
        bytes=list(tokenizer.token_bytes(token_id)),
        token_id=token_id,
    )


def chat_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob]) -> ChoiceLogprobs:
    content = []
    for lp in logprobs:
        top = [_top(tokenizer, t, v) for t, v in lp.top]
        content.append(ChatTokenLogprob(**_top(tokenizer, lp.token_id, lp.logprob).model_dump(), top_logprobs=top))
    return ChoiceLogprobs(content=content)


def completion_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob], text_offset: int) -> CompletionLogprobs:
    """`text_offset` is where the first token's text starts in the choice's text
    (after an echoed prompt, or after text sent in earlier stream chunks)."""
    tokens, offsets = [], []
    for lp in logprobs:
        token = tokenizer.token_str(lp.token_id)
        tokens.append(token)
        offsets.append(text_offset)
        text_offset += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[lp.logprob for lp in logprobs],
        # A dict keeps one entry per string: two ids with the same text keep the better one.
        top_logprobs=[{tokenizer.token_str(t): v for t, v in reversed(lp.top)} for lp in logprobs],
        text_offset=offsets,
    )
