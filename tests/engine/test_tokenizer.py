"""Tokenizer, chat templates and streaming detokenization."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tramontane.engine.chat_template import render_chat_template
from tramontane.engine.defaults import default_embedding_model_path
from tramontane.engine.errors import InvalidRequestError
from tramontane.engine.gguf_file import GGUFFile
from tramontane.engine.tokenizer import IncrementalDecoder, Tokenizer

SAMPLES = [
    "Hello, world!",
    "The year 2024 had 366 days; π≈3.14159.",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n\nmultiple",
    "multiple     spaces    between",
    "naïve café résumé façade Ångström",
    "東京は日本の首都です。",
    "Привет, мир! مرحبا بالعالم",
    "emoji 🙂👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "def f(x):\n    return x ** 2  # square\n",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
    "don't won't it's I'm we'll they've",
    "1234567890 00 007 3.0e-5",
    "CamelCaseIdentifier snake_case_name kebab-case",
    "https://example.com/path?q=1&r=2#frag",
    "\u00a0non-breaking\u2003em-space\u200bzero-width",
    "",
    "a" * 200,
    "Mixed 中文 and English with 123 numbers 🎉",
]
STREAMED = "Café naïve — 東京タワー 🙂 👨‍👩‍👧 ok!"
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 🙂"},
    ],
]


@pytest.fixture(scope="module")
def default_metadata(default_gguf_path: str) -> dict[str, Any]:
    return GGUFFile(default_gguf_path).metadata


@pytest.fixture(scope="module")
def hf_reference(default_gguf_path: str) -> Any:
    """transformers' own tokenizer for the same GGUF (slow: transformers parses the whole file)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(default_gguf_path), gguf_file=os.path.basename(default_gguf_path)
    )


@pytest.fixture(scope="module")
def spm() -> tuple[Any, Tokenizer, dict[str, Any]]:
    """A small SentencePiece BPE vocabulary (trained here, like Llama 2's: byte
    fallback, no normalization) and our tokenizer built from it as a GGUF would store it."""
    sentencepiece = pytest.importorskip("sentencepiece")
    words = (
        "the quick brown fox jumps over lazy dog while seven wizards quietly hex jovial kings "
        "Über naïve café façade résumé 東京 大阪 hello world tokenizer merges pieces"
    ).split()
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
    )
    sp = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    n = sp.get_piece_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    }
    return sp, Tokenizer.from_gguf_metadata(metadata), metadata


def _stream(decoder: IncrementalDecoder, ids: list[int]) -> list[str]:
    return [decoder.step(i) for i in ids]


# -- the default model's byte-level BPE --------------------------------------


@pytest.mark.slow
def test_encode_matches_transformers(default_tokenizer: Tokenizer, hf_reference: Any) -> None:
    for text in SAMPLES:
        assert default_tokenizer.encode(text) == hf_reference.encode(text, add_special_tokens=False), text


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(
    default_tokenizer: Tokenizer, hf_reference: Any, add_generation_prompt: bool
) -> None:
    for messages in CONVERSATIONS:
        ours = default_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        theirs = hf_reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours == theirs


def test_round_trip_and_token_bytes(default_tokenizer: Tokenizer) -> None:
    tok = default_tokenizer
    for text in SAMPLES:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
    assert len(tok.all_token_bytes()) == tok.vocab_size == 49152


def test_special_tokens(default_tokenizer: Tokenizer) -> None:
    tok = default_tokenizer
    im_start, im_end = tok.encode("<|im_start|><|im_end|>")
    assert (im_start, im_end) == (1, 2)
    assert tok.bos_token_id == 1 and im_end in tok.eos_token_ids
    assert {0, 1, 2} <= tok.special_token_ids
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi")  # SmolLM2 adds no BOS
    assert tok.decode(tok.encode("<|im_start|>hi<|im_end|>")) == "hi"
    assert tok.token_str(im_start) == "<|im_start|>" and tok.token_bytes(im_start) == b"<|im_start|>"
    assert tok.token_str(tok.encode(" Hello")[0]) == " Hello"
    assert json.loads(tok.to_json_str())["model"]["type"] == "BPE"


def test_token_str_escapes_partial_utf8(default_tokenizer: Tokenizer) -> None:
    ids = default_tokenizer.encode("🙂")
    assert len(ids) > 1
    assert "\\x" in default_tokenizer.token_str(ids[0])


def test_incremental_decoder_holds_partial_characters(default_tokenizer: Tokenizer) -> None:
    tok = default_tokenizer
    ids = tok.encode(STREAMED)
    pieces = _stream(IncrementalDecoder(tok), ids)
    assert "" in pieces  # some character was split across tokens and held back
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == STREAMED


def test_incremental_decoder_with_prompt_and_specials(default_tokenizer: Tokenizer) -> None:
    tok = default_tokenizer
    prompt = tok.encode("<|im_start|>assistant\n")
    ids = tok.encode("Sure 🙂<|im_end|>")
    decoder = IncrementalDecoder(tok, prompt_ids=prompt)
    assert "".join(_stream(decoder, ids)) + decoder.flush() == "Sure 🙂"
    decoder = IncrementalDecoder(tok, prompt_ids=prompt, skip_special_tokens=False)
    assert "".join(_stream(decoder, ids)) == "Sure 🙂<|im_end|>"


def test_incremental_decoder_flushes_incomplete_bytes(default_tokenizer: Tokenizer) -> None:
    first = default_tokenizer.encode("🙂")[0]
    decoder = IncrementalDecoder(default_tokenizer)
    assert decoder.step(first) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.flush() == ""


# -- chat templates -----------------------------------------------------------


def test_template_without_chat_template_falls_back_to_chatml(default_metadata: dict[str, Any]) -> None:
    metadata = {k: v for k, v in default_metadata.items() if k != "tokenizer.chat_template"}
    tok = Tokenizer.from_gguf_metadata(metadata)
    assert tok.chat_template is None
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_helpers_match_transformers_conventions() -> None:
    source = (
        "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}|{% endfor %}"
        "{{ tools | tojson(indent=2) }}|{{ '<é>' | tojson }}|{{ strftime_now('%Y') | length }}|{{ bos_token }}"
    )
    messages = [{"role": "user", "content": "a"}, {"role": "skip", "content": "b"}, {"role": "user", "content": "c"}]
    out = render_chat_template(source, messages, [{"x": 1}], True, {"bos_token": "<s>"})
    assert out == 'a|c|[\n  {\n    "x": 1\n  }\n]|"<é>"|4|<s>'


def test_template_errors_are_invalid_requests(default_tokenizer: Tokenizer) -> None:
    with pytest.raises(InvalidRequestError, match="no system"):
        render_chat_template("{{ raise_exception('no system messages') }}", [], None, True, {})
    with pytest.raises(InvalidRequestError):  # content parts where the template concatenates strings
        default_tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    with pytest.raises(InvalidRequestError):
        render_chat_template("{% for %}", [], None, True, {})
    with pytest.raises(InvalidRequestError):  # the sandbox refuses to mutate
        render_chat_template("{{ messages.append(1) }}", [], None, True, {})


def test_hf_folder_tokenizer(default_tokenizer: Tokenizer, tmp_path: Path) -> None:
    default_tokenizer.hf_tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": "<|endoftext|>",
        "eos_token": {"content": "<|im_end|>", "special": True},
        "add_bos_token": True,
        "chat_template": [
            {"name": "default", "template": "plain:{{ messages[0].content }}"},
            {"name": "tool_use", "template": "tools:{{ tools | length }}"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_hf_dir(str(tmp_path), extra_eos_token_ids=[5])
    assert tok.bos_token_id == 0 and tok.eos_token_ids == {2, 5}
    assert tok.encode("hi", add_special_tokens=True) == [0, *tok.encode("hi")]
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "plain:x"
    assert tok.apply_chat_template([], tools=[{"a": 1}, {"b": 2}]) == "tools:2"
    (tmp_path / "chat_template.jinja").write_text("jinja:{{ eos_token }}")
    assert Tokenizer.from_hf_dir(str(tmp_path)).apply_chat_template([]) == "jinja:<|im_end|>"


def test_hf_folder_padding_is_left_to_callers() -> None:
    """The embedding model's tokenizer.json pads to 128 tokens; encode must not."""
    tok = Tokenizer.from_hf_dir(default_embedding_model_path())
    assert tok.encode("Hello world", add_special_tokens=True) == [101, 7592, 2088, 102]  # [CLS] ... [SEP]
    assert len(tok.encode("word " * 600)) == 600


# -- SentencePiece vocabularies (Llama 2 / Mistral GGUFs) --------------------


def test_sentencepiece_matches_sentencepiece(spm: tuple[Any, Tokenizer, dict[str, Any]]) -> None:
    sp, tok, _ = spm
    texts = [s for s in SAMPLES if "<|" not in s] + ["jumpsover thelazy", "Über 東京 大阪", " x", "x "]
    for text in texts:
        ids = tok.encode(text)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == (" " + text if text else "").encode()


def test_sentencepiece_specials_and_bos(spm: tuple[Any, Tokenizer, dict[str, Any]]) -> None:
    sp, tok, _ = spm
    assert tok.encode("hi", add_special_tokens=True)[0] == sp.bos_id()
    assert tok.encode("a</s>")[-1] == sp.eos_id() and sp.eos_id() in tok.eos_token_ids
    assert tok.token_bytes(sp.piece_to_id("<0x41>")) == b"A"


def test_sentencepiece_streaming_keeps_leading_space(spm: tuple[Any, Tokenizer, dict[str, Any]]) -> None:
    _, tok, _ = spm
    prompt, reply = tok.encode("hello"), tok.encode("world 東京 🙂 café")  # "▁world", ...
    pieces = _stream(IncrementalDecoder(tok, prompt_ids=prompt), reply)
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == tok.decode(prompt + reply)[len(tok.decode(prompt)) :]
    assert "".join(pieces).startswith(" world")


def test_sentencepiece_matches_transformers_conversion(spm: tuple[Any, Tokenizer, dict[str, Any]]) -> None:
    """transformers' GGUF conversion agrees on ordinary text. It differs, by design,
    on text opening with spaces (its Metaspace adds no ▁ there; sentencepiece and
    llama.cpp do, and so do we) and after special tokens (llama.cpp adds a ▁ there)."""
    pytest.importorskip("transformers")
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    _, tok, metadata = spm
    fields = {key.removeprefix("tokenizer.ggml."): value for key, value in metadata.items()}
    backend, _ = convert_gguf_tokenizer("llama", {**fields, "tokenizer_type": "llama", "unk_token_id": 0})
    for text in SAMPLES:
        if "<|" not in text and not text.startswith(" "):
            assert tok.encode(text) == backend.encode(text, add_special_tokens=False).ids, text
    assert tok.encode("  two") != backend.encode("  two", add_special_tokens=False).ids
