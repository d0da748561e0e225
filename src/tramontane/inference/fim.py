"""Fill-in-the-middle prompts, for models trained with FIM control tokens.

A model without them (the default SmolLM2 among them) gets a 400 instead of a
prompt+suffix heuristic: a model never trained to fill a gap writes code that
ignores the suffix, which would look like a working FIM endpoint while not being
one. Model cards report which models can do it (`capabilities.completion_fim`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import Tokenizer


@dataclass(frozen=True)
class FIMFormat:
    prefix_id: int
    suffix_id: int
    middle_id: int | None  # None: the prefix comes last and generation follows it
    suffix_first: bool

    # (prefix, suffix, middle or None, suffix first): Mistral's Codestral writes
    # [SUFFIX]s[PREFIX]p; StarCoder-style and Qwen coders write p, s, then middle.
    _KNOWN = (
        ("[PREFIX]", "[SUFFIX]", None, True),
        ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", False),
        ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", False),
    )

    @classmethod
    def detect(cls, tokenizer: Tokenizer) -> FIMFormat | None:
        lookup = tokenizer.hf_tokenizer.token_to_id
        for prefix, suffix, middle, suffix_first in cls._KNOWN:
            ids = lookup(prefix), lookup(suffix), lookup(middle) if middle else None
            if ids[0] is not None and ids[1] is not None and (middle is None or ids[2] is not None):
                return cls(ids[0], ids[1], ids[2], suffix_first)
        return None

    def prompt(self, tokenizer: Tokenizer, prefix: str, suffix: str) -> list[int]:
        head = tokenizer.encode("", add_special_tokens=True)  # BOS, for models that want one
        p = [self.prefix_id, *tokenizer.encode(prefix)]
        s = [self.suffix_id, *tokenizer.encode(suffix)]
        if self.suffix_first:
            return [*head, *s, *p]
        return [*head, *p, *s, self.middle_id] if self.middle_id is not None else [*head, *p, *s]
