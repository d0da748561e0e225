"""Mistral's tokenizers through mistral-common, Mistral's own library.

mistral-common is the reference for how a Mistral model sees a conversation
(each tokenizer version places system prompts, tools, tool calls and tool
results its own way), so chat requests are tokenized by it, not by a template
re-implementing it. The engine still needs a `tokenizers` model of the same
vocabulary (for incremental decoding, logprob bytes and llguidance's grammar
engine); it is built here from the same file and checked against
mistral-common in the tests:

- tekken (tiktoken-style byte-level BPE): the special tokens come first, then
  the byte-level vocabulary; a tiktoken merge of the pair (a, b) is the merge of
  the token a+b, ranked by that token's rank.
- SentencePiece (`tokenizer.model.v*`): pieces, scores and types, as a GGUF file
  of a SentencePiece model describes them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import tokenizers
from mistral_common.exceptions import MistralCommonException
from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy, TokenizerVersion
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer
from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers.models import BPE

from tramontane.engine.errors import InvalidRequestError, ModelLoadError

# Tokens the model writes to call tools. They are special to mistral-common, but the
# server must see them in the decoded text to find the calls, so they decode as text.
TOOL_CALL_TOKENS = ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")

# sentencepiece's piece types, which are also llama.cpp's token types.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class ImageLayout:
    """How mistral-common's image encoder turns an image into tokens: rows of [IMG]
    tokens, one per (patch_size * spatial_merge_size)-pixel square, each row ended by
    [IMG_BREAK] and the last by [IMG_END]; the longest side is first brought within
    max_image_size pixels."""

    token_id: int
    break_id: int
    end_id: int
    patch_size: int
    spatial_merge_size: int
    max_image_size: int


class MistralChatEncoder:
    """Chat requests (OpenAI-shaped message dicts) to token ids, by mistral-common."""

    def __init__(self, path: str) -> None:
        try:
            self._mistral = MistralTokenizer.from_file(path)
        except (MistralCommonException, ValueError, AssertionError, OSError) as e:
            raise ModelLoadError(f"cannot load the mistral-common tokenizer {path}: {e}") from e
        self.path = path
        self.raw = self._mistral.instruct_tokenizer.tokenizer

    @property
    def version(self) -> TokenizerVersion:
        return self.raw.version

    @property
    def supports_tools(self) -> bool:
        """v1 has no tool tokens; tools then go in the system prompt, as for other models."""
        return self.version >= TokenizerVersion.v2

    @property
    def names_calls_with_args(self) -> bool:
        """v11 on write a call as [TOOL_CALLS]name[ARGS]{...}, earlier ones as a JSON list."""
        return self.version >= TokenizerVersion.v11

    @property
    def mistral_tokenizer(self) -> MistralTokenizer:
        return self._mistral

    @property
    def image_layout(self) -> ImageLayout | None:
        """How images become tokens; None for a tokenizer without an image encoder."""
        encoder = getattr(self._mistral.instruct_tokenizer, "image_encoder", None)
        if encoder is None:
            return None
        config, ids = encoder.image_config, encoder.special_ids
        return ImageLayout(
            ids.img, ids.img_break, ids.img_end, config.image_patch_size, config.spatial_merge_size,
            config.max_image_size,
        )

    def encode_chat(self, messages: list[dict[str, Any]], tools: list[dict] | None, prefix: str = "") -> list[int]:
        """The prompt for `messages`; with `prefix`, an assistant message the model continues."""
        return self.encode_chat_with_images(messages, tools, prefix)[0]

    def encode_chat_with_images(
        self, messages: list[dict[str, Any]], tools: list[dict] | None, prefix: str = ""
    ) -> tuple[list[int], list[np.ndarray]]:
        """The prompt and, in prompt order, each image's pixels as the encoder reads them
        ([C, H, W], resized and normalised by mistral-common). User messages may hold
        a list of parts: {"type": "text", "text": ...} and {"type": "image", "image": PIL image}."""
        messages = list(messages)
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
        try:
            # mistral-common reads images from URLs or files itself; ours arrive decoded
            # (and checked), so those messages are built here and swapped in.
            with_images = {i: _user_message(m) for i, m in enumerate(messages) if isinstance(m.get("content"), list)}
            openai = [{"role": "user", "content": ""} if i in with_images else m for i, m in enumerate(messages)]
            request = ChatCompletionRequest.from_openai(
                openai, tools=tools or None, continue_final_message=bool(prefix)
            )
            if len(request.messages) != len(messages):
                raise InvalidRequestError("images are only read in plain user messages", param="messages")
            for i, message in with_images.items():
                request.messages[i] = message
            encoded = self._mistral.encode_chat_completion(request)
            return encoded.tokens, list(encoded.images)
        except InvalidRequestError:
            raise
        except (MistralCommonException, ValueError, AssertionError, TypeError, KeyError) as e:
            # Pydantic's ValidationError is a ValueError; mistral-common asserts some rules.
            raise InvalidRequestError(f"these messages cannot be encoded for this model: {e}", param="messages") from e

    def render(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> str:
        """The prompt as text, special tokens written out (for display and probes)."""
        return self._mistral.decode(self.encode_chat(messages, tools), special_token_policy=SpecialTokenPolicy.KEEP)


def _user_message(message: dict[str, Any]) -> UserMessage:
    if message.get("role") != "user":
        raise InvalidRequestError("images and other content parts are only read in user messages", param="messages")
    chunks: list[TextChunk | ImageChunk] = []
    for part in message["content"]:
        if part["type"] == "text":
            chunks.append(TextChunk(text=part["text"]))
        elif part["type"] == "image":
            chunks.append(ImageChunk(image=part["image"]))
        else:
            raise InvalidRequestError(f"content parts of type {part['type']!r} are not read", param="messages")
    return UserMessage(content=chunks)


def tekken_backend(tekken: Tekkenizer, path: str) -> tokenizers.Tokenizer:
    """A byte-level BPE `tokenizers` model equal to the tekken tokenizer at `path`."""
    try:
        with open(path, encoding="utf-8") as f:
            pattern = json.load(f)["config"]["pattern"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot read the tekken pattern from {path}: {e}") from e
    n_special = tekken.num_special_tokens
    pieces = [tekken.id_to_byte_piece(i) for i in range(n_special, tekken.n_words)]
    to_symbols = _byte_symbols()
    symbols = ["".join(to_symbols[b] for b in piece) for piece in pieces]
    specials = [tekken.id_to_piece(i) for i in range(n_special)]
    vocab = {symbol: n_special + rank for rank, symbol in enumerate(symbols)}
    if clash := [t for t in specials if t in vocab]:
        raise ModelLoadError(f"{path}: special tokens {clash[:3]} are also vocabulary entries")
    # The special tokens are vocabulary entries too, so that they keep their ids.
    vocab.update({token: i for i, token in enumerate(specials)})
    rank_of = {piece: rank for rank, piece in enumerate(pieces)}
    merges: list[tuple[int, int, str, str]] = []
    for rank, piece in enumerate(pieces):
        for cut in range(1, len(piece)):
            left, right = rank_of.get(piece[:cut]), rank_of.get(piece[cut:])
            if left is not None and right is not None and left < rank and right < rank:
                merges.append((rank, left, symbols[left], symbols[right]))
    merges.sort()
    # ignore_merges: a pre-token that is a whole vocabulary entry is that token, as in tiktoken.
    hf = tokenizers.Tokenizer(BPE(vocab, [(a, b) for _, _, a, b in merges], ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, normalized=False) for t in specials if t not in TOOL_CALL_TOKENS])
    hf.add_tokens([AddedToken(t, normalized=False) for t in specials if t in TOOL_CALL_TOKENS])
    return hf


def sentencepiece_metadata(path: str) -> dict[str, Any]:
    """A SentencePiece model file described in GGUF's tokenizer.* keys."""
    from sentencepiece import SentencePieceProcessor

    try:
        sp = SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load the SentencePiece model {path}: {e}") from e
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(_UNKNOWN)
        elif sp.is_control(i):
            types.append(_CONTROL)
        elif sp.is_byte(i):
            types.append(_BYTE)
        elif sp.is_unused(i):
            types.append(_UNUSED)
        else:
            types.append(_NORMAL)
    pieces = [sp.id_to_piece(i) for i in range(n)]
    for i, piece in enumerate(pieces):
        if piece in TOOL_CALL_TOKENS:
            types[i] = _USER_DEFINED  # matched whole in text, and not skipped when decoding
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": pieces,
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.add_bos_token": True,
    }


def _byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet, byte -> symbol."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in kept}
    table.update({b: chr(0x100 + i) for i, b in enumerate(b for b in range(256) if b not in kept)})
    return [table[b] for b in range(256)]


def is_mistral_tokenizer_file(path: str) -> bool:
    name = os.path.basename(path)
    return (name.endswith(".json") and "tekken" in name) or ".model" in name
