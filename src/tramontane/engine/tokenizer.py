"""Tokenizer: a HF `tokenizers` model plus the model's chat format.

Built from a GGUF file's metadata, from a HF folder (tokenizer.json and
tokenizer_config.json), or from a mistral-common tokenizer file (tekken.json,
tokenizer.model.v*), whose chat format is mistral-common's own. Token ids, text
and chat prompts all go through here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from tramontane.engine.chat_template import CHATML_TEMPLATE, render_chat_template
from tramontane.engine.errors import InvalidRequestError, ModelLoadError

if TYPE_CHECKING:
    from tramontane.engine.mistral_tokenizer import MistralChatEncoder

# llama.cpp token types (tokenizer.ggml.token_type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte-fallback token
_CHATML_END = "<|im_end|>"

# Split regexes of the byte-level vocabularies llama.cpp names in tokenizer.ggml.pre
# (the models' own tokenizer.json pre-tokenizers), beside GPT-2's built into ByteLevel.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2/Qwen3's: Llama 3's with every digit alone.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "tekken": _TEKKEN_SPLIT,
    "qwen2": _QWEN2_SPLIT,
}


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet as char -> byte: printable Latin-1 bytes stand
    for themselves, the other bytes for the code points from U+0100 on."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in kept}
    table.update({chr(0x100 + i): b for i, b in enumerate(b for b in range(256) if b not in kept)})
    return table


_BYTE_OF_CHAR = _byte_alphabet()


class Tokenizer:
    def __init__(
        self,
        hf_tokenizer: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None,
        eos_token_ids: Iterable[int],
        chat_templates: Mapping[str, str],
        byte_level: bool,
        mistral: MistralChatEncoder | None = None,
    ) -> None:
        self._hf = hf_tokenizer
        # Set: chat prompts are mistral-common's, not a template's.
        self.mistral = mistral
        self.vocab_size: int = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self._added = hf_tokenizer.get_added_tokens_decoder()
        self.special_token_ids: set[int] = {i for i, tok in self._added.items() if tok.special}
        self._templates = dict(chat_templates)
        self.chat_template: str | None = self._templates.get("default")
        eos = list(eos_token_ids)
        end = hf_tokenizer.token_to_id(_CHATML_END)
        if end is not None and any(_CHATML_END in t for t in self._templates.values()):
            eos.append(end)  # ChatML models end their turn with <|im_end|>, whatever the file's EOS
        self.eos_token_ids: set[int] = set(eos)
        # Templates see the special tokens as text, as in transformers.
        self._template_vars = {
            "bos_token": self._token_text(bos_token_id),
            "eos_token": self._token_text(eos[0] if eos else None),
        }
        self._byte_level = byte_level
        self._all_bytes: list[bytes] | None = None

    # -- construction -------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, md: Mapping[str, Any]) -> Tokenizer:
        """From llama.cpp's tokenizer.* metadata keys ("gpt2" byte-level BPE or "llama" SentencePiece)."""
        kind = md.get("tokenizer.ggml.model")
        hf = _gguf_backend(md)
        bos = md.get("tokenizer.ggml.bos_token_id")
        eos = [md.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        # llama.cpp's defaults when the flags are absent: BOS for SentencePiece only.
        add_bos = md.get("tokenizer.ggml.add_bos_token", kind == "llama")
        add_eos = md.get("tokenizer.ggml.add_eos_token", False)
        hf.post_processor = _bos_eos_processor(hf, bos if add_bos else None, eos[0] if add_eos else None)
        named = "tokenizer.chat_template."  # llama.cpp's key prefix for extra named templates
        templates = {k.removeprefix(named): v for k, v in md.items() if k.startswith(named)}
        if "tokenizer.chat_template" in md:
            templates["default"] = md["tokenizer.chat_template"]
        return cls(
            hf,
            bos_token_id=bos,
            eos_token_ids=[i for i in eos if i is not None],
            chat_templates=templates,
            byte_level=kind == "gpt2",
        )

    @classmethod
    def from_hf_dir(cls, path: str, extra_eos_token_ids: Iterable[int] = ()) -> Tokenizer:
        """From a HF folder: tokenizer.json, tokenizer_config.json, chat_template.jinja."""
        try:
            with open(os.path.join(path, "tokenizer.json"), encoding="utf-8") as f:
                spec = f.read()
            hf = tokenizers.Tokenizer.from_str(spec)
        except Exception as e:  # tokenizers raises a bare Exception for bad files
            raise ModelLoadError(f"cannot load {path}/tokenizer.json: {e}") from e
        # Some files (sentence-transformers') pad or truncate every encoding; callers do that themselves.
        hf.no_padding()
        hf.no_truncation()
        config: dict[str, Any] = {}
        config_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_path):
            try:
                with open(config_path, encoding="utf-8") as f:
                    config = json.load(f)
            except ValueError as e:
                raise ModelLoadError(f"cannot parse {config_path}: {e}") from e
        bos = _added_token_id(hf, config.get("bos_token"))
        eos = _added_token_id(hf, config.get("eos_token"))
        if "add_bos_token" in config or "add_eos_token" in config:
            # transformers rebuilds the post-processor from these flags, over tokenizer.json's.
            hf.post_processor = _bos_eos_processor(
                hf, bos if config.get("add_bos_token") else None, eos if config.get("add_eos_token") else None
            )
        templates = _templates_from_config(config.get("chat_template"))
        jinja_path = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja_path):  # newer transformers saves the template beside the config
            with open(jinja_path, encoding="utf-8") as f:
                templates["default"] = f.read()
        # Byte-level vocabularies spell bytes as symbols; the decoder says which kind this is.
        byte_level = "ByteLevel" in json.dumps(json.loads(spec).get("decoder"))
        eos_ids = [*([eos] if eos is not None else []), *extra_eos_token_ids]
        return cls(hf, bos_token_id=bos, eos_token_ids=eos_ids, chat_templates=templates, byte_level=byte_level)

    @classmethod
    def from_mistral_file(cls, path: str) -> Tokenizer:
        """From a mistral-common tokenizer file: tekken.json or tokenizer.model.v*."""
        from tramontane.engine import mistral_tokenizer

        encoder = mistral_tokenizer.MistralChatEncoder(path)
        raw = encoder.raw
        tekken = path.endswith(".json")
        if tekken:
            hf = mistral_tokenizer.tekken_backend(raw, path)
        else:
            hf = _gguf_backend(mistral_tokenizer.sentencepiece_metadata(path))
        hf.post_processor = _bos_eos_processor(hf, raw.bos_id, None)
        return cls(
            hf, bos_token_id=raw.bos_id, eos_token_ids=[raw.eos_id], chat_templates={}, byte_level=tekken,
            mistral=encoder,
        )

    def to_state(self) -> dict[str, Any]:
        """Everything the tokenizer is, as plain data (see `from_state`)."""
        if self.mistral is not None:
            # mistral-common rebuilds from its file, which is part of the checkpoint.
            return {"json": self._hf.to_str(), "mistral_file": self.mistral.path}
        return {
            "json": self._hf.to_str(),
            "bos_token_id": self.bos_token_id,
            "eos_token_ids": sorted(self.eos_token_ids),
            "chat_templates": dict(self._templates),
            "byte_level": self._byte_level,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Tokenizer:
        """Rebuilds a tokenizer from `to_state()`: far quicker than from the
        checkpoint, whose vocabulary would be parsed again."""
        if "mistral_file" in state:
            from tramontane.engine.mistral_tokenizer import MistralChatEncoder

            encoder = MistralChatEncoder(state["mistral_file"])
            raw = encoder.raw
            return cls(
                tokenizers.Tokenizer.from_str(state["json"]), bos_token_id=raw.bos_id, eos_token_ids=[raw.eos_id],
                chat_templates={}, byte_level=state["mistral_file"].endswith(".json"), mistral=encoder,
            )
        return cls(
            tokenizers.Tokenizer.from_str(state["json"]),
            bos_token_id=state["bos_token_id"],
            eos_token_ids=state["eos_token_ids"],
            chat_templates=state["chat_templates"],
            byte_level=state["byte_level"],
        )

    # -- text <-> ids -------------------------------------------------------

    @property
    def hf_tokenizer(self) -> tokenizers.Tokenizer:
        return self._hf

    def to_json_str(self) -> str:
        return self._hf.to_str()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in it encode as themselves.
        add_special_tokens adds what the model wants around a sequence (BOS, usually)."""
        return self._hf.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_str(self, token_id: int) -> str:
        """Readable text of one token (for logprobs); bytes that are not whole
        UTF-8 characters show as \\xNN escapes, as OpenAI's API shows them."""
        if token_id in self._added:
            return self._added[token_id].content
        return self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for; an added/special token stands for its text."""
        return self.all_token_bytes()[token_id]

    def all_token_bytes(self) -> list[bytes]:
        if self._all_bytes is None:
            self._all_bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]
        return self._all_bytes

    def _piece_bytes(self, token_id: int) -> bytes:
        piece = self._hf.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._added:
            return piece.encode()
        if self._byte_level:
            try:
                return bytes(_BYTE_OF_CHAR[c] for c in piece)
            except KeyError:  # outside the byte alphabet: stored as plain text
                return piece.encode()
        if match := _BYTE_PIECE.fullmatch(piece):
            return bytes([int(match[1], 16)])
        return piece.replace("\u2581", " ").encode()

    # -- chat ---------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt text for `messages`, from the model's template (ChatML if it has none);
        for a Mistral tokenizer, mistral-common's prompt with its special tokens as text."""
        if self.mistral is not None:
            return self.mistral.render(messages, tools if self.mistral.supports_tools else None)
        source = (tools and self._templates.get("tool_use")) or self.chat_template
        if source is None:
            source = next(iter(self._templates.values()), CHATML_TEMPLATE)
        return render_chat_template(source, messages, tools, add_generation_prompt, {**self._template_vars, **extra})

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        prefix: str = "",
        add_generation_prompt: bool = True,
        template_vars: dict[str, Any] | None = None,
    ) -> list[int]:
        """Prompt token ids for `messages`, ending where the assistant answers; `prefix`
        is the start of that answer, which the model continues. (mistral-common's
        prompts always end where the assistant answers: add_generation_prompt and
        `template_vars`, variables for the template, are the templates' notions.)"""
        if self.mistral is not None:
            return self.mistral.encode_chat(messages, tools if self.mistral.supports_tools else None, prefix)
        text = self.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **(template_vars or {})
        )
        return self.encode(text + prefix)

    def encode_chat_with_images(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, prefix: str = ""
    ) -> tuple[list[int], list[Any]]:
        """encode_chat for messages whose user turns hold image parts
        ({"type": "image", "image": PIL image}): the prompt, with each image laid out
        by mistral-common's image encoder, and the images' pixels ([C, H, W] arrays)."""
        if self.mistral is None or self.mistral.image_layout is None:
            raise InvalidRequestError("this model's tokenizer has no image encoder", param="messages")
        return self.mistral.encode_chat_with_images(
            messages, tools if self.mistral.supports_tools else None, prefix
        )

    @property
    def tool_call_format(self) -> str:
        """How this model writes tool calls: "hermes" (<tool_call> blocks, which models
        without tool tokens are told to write), or Mistral's [TOOL_CALLS] followed by a
        JSON list ("mistral_json", tokenizers v2 to v7) or by name[ARGS]{...} ("mistral_args")."""
        if self.mistral is None or not self.mistral.supports_tools:
            return "hermes"
        return "mistral_args" if self.mistral.names_calls_with_args else "mistral_json"

    def _token_text(self, token_id: int | None) -> str:
        return "" if token_id is None else (self._hf.id_to_token(token_id) or "")


def _gguf_backend(md: Mapping[str, Any]) -> tokenizers.Tokenizer:
    kind = md.get("tokenizer.ggml.model")
    tokens: list[str] = md.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise ModelLoadError("the GGUF file has no tokenizer vocabulary")
    types: list[int] = md.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    scores: list[float] = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    if not len(tokens) == len(types) == len(scores):
        raise ModelLoadError("the GGUF tokenizer's tokens, token types and scores differ in length")
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)  # a few files repeat a token; keep its first id
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
        hf = tokenizers.Tokenizer(BPE(vocab, merges))
        hf.pre_tokenizer = _byte_level_pre_tokenizer(md.get("tokenizer.ggml.pre"))
        hf.decoder = decoders.ByteLevel()
    elif kind == "llama":
        unk = md.get("tokenizer.ggml.unknown_token_id")
        hf = _sentencepiece_bpe(
            vocab,
            tokens,
            scores,
            types,
            tokens[unk] if unk is not None else None,
            add_space_prefix=md.get("tokenizer.ggml.add_space_prefix", True),
        )
    else:
        raise ModelLoadError(f"unsupported GGUF tokenizer model {kind!r} (supported: gpt2, llama)")
    # llama.cpp matches control, unknown and user-defined tokens whole in text;
    # the first two are special (skipped when decoding), the last is not.
    special = [tokens[i] for i, t in enumerate(types) if t in (_UNKNOWN, _CONTROL)]
    hf.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    hf.add_tokens([AddedToken(tokens[i], normalized=False) for i, t in enumerate(types) if t == _USER_DEFINED])
    return hf


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    if pre in (None, "default", "gpt-2", "gpt2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # SmolLM's tokenizer.json: every digit alone, then GPT-2's split
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in _SPLITS:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ModelLoadError(f"unsupported GGUF pre-tokenizer {pre!r}")


def _sentencepiece_bpe(
    vocab: dict[str, int],
    tokens: list[str],
    scores: list[float],
    types: list[int],
    unk_token: str | None,
    *,
    add_space_prefix: bool,
) -> tokenizers.Tokenizer:
    """A SentencePiece BPE model (Llama 2, Mistral) as a `tokenizers` BPE.

    SentencePiece repeatedly merges the adjacent pair whose concatenation is the
    best-scoring piece; `tokenizers` merges by rank, so every two-piece split of
    every normal piece is ranked by that piece's score. What is verified: token
    for token equality with sentencepiece itself, and with transformers' GGUF
    conversion except where noted below, on a small vocabulary trained in the
    tests; no real Llama 2/Mistral vocabulary is at hand to check. Where two
    splits make the same piece, their relative rank is our own choice.
    """
    ranked: list[tuple[float, int, int]] = []
    for token, score, ttype in zip(tokens, scores, types, strict=True):
        if ttype != _NORMAL:
            continue
        for cut in range(1, len(token)):
            left, right = vocab.get(token[:cut]), vocab.get(token[cut:])
            if left is not None and right is not None:
                ranked.append((-score, left, right))
    ranked.sort()
    merges = [(tokens[left], tokens[right]) for _, left, right in ranked]
    hf = tokenizers.Tokenizer(BPE(vocab, merges, unk_token=unk_token, fuse_unk=True, byte_fallback=True))
    # A normalizer rather than transformers' Metaspace pre-tokenizer: Metaspace adds
    # no ▁ to text that already starts with a space, sentencepiece always does; and
    # normalizers run on each stretch between special tokens, so each stretch gets
    # its ▁ as llama.cpp gives it one.
    spaces = [normalizers.Replace(" ", "\u2581")]
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), *spaces] if add_space_prefix else spaces)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    hf.decoder = decoders.Sequence(steps)
    return hf


def _bos_eos_processor(hf: tokenizers.Tokenizer, bos: int | None, eos: int | None) -> processors.TemplateProcessing:
    head = [hf.id_to_token(bos)] if bos is not None else []
    tail = [hf.id_to_token(eos)] if eos is not None else []
    return processors.TemplateProcessing(
        single=[*head, "$A", *tail],
        pair=[*head, "$A", *tail, "$B:1", *tail],
        special_tokens=[(hf.id_to_token(i), i) for i in {bos, eos} if i is not None],
    )


def _added_token_id(hf: tokenizers.Tokenizer, token: str | dict[str, Any] | None) -> int | None:
    if isinstance(token, dict):  # serialized AddedToken
        token = token.get("content")
    return hf.token_to_id(token) if token else None


def _templates_from_config(value: str | list[dict[str, str]] | None) -> dict[str, str]:
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):  # named templates: [{"name": "tool_use", "template": "..."}]
        return {item["name"]: item["template"] for item in value}
    return {}


class IncrementalDecoder:
    """Turns a stream of token ids into a stream of complete text.

    Each step decodes a short window of recent tokens twice, with and without
    the new one, and emits the difference (as vLLM does). The window's older
    tokens give the decoder context, so the leading space SentencePiece keeps in
    "▁word" survives; text ending in U+FFFD is held back, because that is a
    UTF-8 character whose remaining bytes are still to come.
    """

    _PROMPT_CONTEXT = 5  # prompt tokens kept as context for the first steps

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None, skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids = list(prompt_ids[-self._PROMPT_CONTEXT :]) if prompt_ids else []
        self._prefix = 0  # window start: context tokens whose text was already emitted
        self._read = len(self._ids)  # first token whose text is not yet emitted

    def step(self, token_id: int) -> str:
        """The new text `token_id` completes ("" while a character is incomplete)."""
        self._ids.append(token_id)
        prefix_text, full_text = self._window_texts()
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        return self._advance(full_text[len(prefix_text) :])

    def flush(self) -> str:
        """Whatever is held back at the end; bytes that never formed a character become U+FFFD."""
        prefix_text, full_text = self._window_texts()
        return self._advance(full_text[len(prefix_text) :])

    def _window_texts(self) -> tuple[str, str]:
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix : self._read], skip_special_tokens=self._skip_special)
        return prefix, decode(self._ids[self._prefix :], skip_special_tokens=self._skip_special)

    def _advance(self, text: str) -> str:
        # The emitted tokens become the next window's context; older ones are dropped.
        del self._ids[: self._read]
        self._prefix, self._read = 0, len(self._ids)
        return text
