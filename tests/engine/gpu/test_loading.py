"""Checkpoints read from safetensors straight into the device the GPU path runs on."""

from __future__ import annotations

import json

import pytest
import torch
from gpu_helpers import greedy, tiny_config, tiny_tensors, word_tokenizer
from safetensors.torch import save_file

from tramontane.engine import EngineConfig, LLMEngine, load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@pytest.fixture
def tiny_dir(tmp_path):
    cfg = tiny_config()
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in tiny_tensors(cfg).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "mistral", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": 512, "bos_token_id": 1, "eos_token_id": 2,
    }))
    word_tokenizer(cfg.vocab_size).hf_tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path, tensors


def test_from_path_on_the_gpu_path_reads_the_checkpoint(tiny_dir):
    path, tensors = tiny_dir
    checkpoint = load_checkpoint(str(path), device="cpu")
    assert torch.equal(checkpoint.tensors["model.layers.1.mlp.up_proj.weight"], tensors["model.layers.1.mlp.up_proj.weight"])
    engine = LLMEngine.from_path(str(path), EngineConfig(attention_backend="flex", num_kv_blocks=8))
    assert len(greedy(engine, [list(range(5, 20))], 4)[0]) == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_land_on_the_gpu_and_generate_like_the_cpu(tiny_dir):
    path, _ = tiny_dir
    checkpoint = load_checkpoint(str(path), device="cuda")
    assert all(t.device.type == "cuda" for t in checkpoint.tensors.values())
    base = dict(num_kv_blocks=16, dtype="float32")
    on_gpu = LLMEngine.from_path(str(path), EngineConfig(device="cuda", **base))
    on_cpu = LLMEngine.from_path(str(path), EngineConfig(attention_backend="flex", **base))
    prompts = [list(range(5, 40)), list(range(50, 53))]
    assert greedy(on_gpu, prompts, 8) == greedy(on_cpu, prompts, 8)
