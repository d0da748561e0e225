"""A trainable view of a checkpoint: its weights frozen, low-rank factors (LoRA,
Hu et al. 2021) added to chosen projections, and a dense causal forward pass.

Training needs no paged KV cache and no quantized kernels, so this forward is
the plain one: full causal attention over padded batches, in float32 on CPU.
The adapters are saved in PEFT's on-disk layout, so transformers/peft and our
engine's multi-LoRA serving read the same files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..engine import Checkpoint, ModelConfig
from ..engine.layers import RMSNorm, RotaryEmbedding, apply_rope

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
TARGET_MODULES = ATTENTION_MODULES + MLP_MODULES

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = TARGET_MODULES

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class Projection(nn.Module):
    """A frozen bias-free linear layer, plus `scaling * B @ A` when it is a LoRA target.

    B starts at zero, so training starts from exactly the base model."""

    def __init__(self, weight: torch.Tensor, rank: int, scaling: float):
        super().__init__()
        self.register_buffer("weight", weight.float().contiguous())
        self.scaling = scaling
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        if rank:
            out_features, in_features = weight.shape
            self.lora_A = nn.Parameter(torch.empty(rank, in_features))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.lora_A is None or self.lora_B is None:
            return y
        return y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], spec: LoraSpec):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm.weight.data = w["input_layernorm.weight"].float()
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm.weight.data = w["post_attention_layernorm.weight"].float()
        self.proj = nn.ModuleDict()
        for name in TARGET_MODULES:
            group = "self_attn" if name in ATTENTION_MODULES else "mlp"
            rank = spec.rank if name in spec.target_modules else 0
            self.proj[name] = Projection(w[f"{group}.{name}.weight"], rank, spec.scaling)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cfg, p = self.cfg, self.proj
        batch, length, _ = x.shape
        h = self.input_layernorm(x)
        q = apply_rope(p["q_proj"](h).view(batch, length, cfg.num_attention_heads, cfg.head_dim), cos, sin)
        k = apply_rope(p["k_proj"](h).view(batch, length, cfg.num_key_value_heads, cfg.head_dim), cos, sin)
        v = p["v_proj"](h).view(batch, length, cfg.num_key_value_heads, cfg.head_dim)
        # Right-padded batches need no mask beyond causality: real tokens never see the pads after them.
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
        )
        x = x + p["o_proj"](attn.transpose(1, 2).reshape(batch, length, -1))
        h = self.post_attention_layernorm(x)
        return x + p["down_proj"](F.silu(p["gate_proj"](h)) * p["up_proj"](h))


class LoraModel(nn.Module):
    """The base decoder with LoRA factors; only the factors are parameters."""

    def __init__(self, checkpoint: Checkpoint, spec: LoraSpec, max_len: int):
        super().__init__()
        cfg = checkpoint.config
        if cfg.is_moe:
            raise ValueError("LoRA fine-tuning of mixture-of-experts models is not supported")
        if cfg.sliding_window is not None and max_len > cfg.sliding_window:
            raise ValueError(f"seq_len {max_len} exceeds the model's sliding window {cfg.sliding_window}")
        self.config = cfg
        self.spec = spec
        tensors = checkpoint.tensors
        self.register_buffer("embed", tensors["model.embed_tokens.weight"].float())
        head = tensors["model.embed_tokens.weight"] if cfg.tie_word_embeddings else tensors["lm_head.weight"]
        self.register_buffer("head", head.float())
        self.rotary = RotaryEmbedding(cfg.head_dim, max_len, cfg.rope_theta, cfg.rope_scaling)
        self.layers = nn.ModuleList()
        for i in range(cfg.num_hidden_layers):
            prefix = f"model.layers.{i}."
            weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            self.layers.append(Block(cfg, weights, spec))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm.weight.data = tensors["model.norm.weight"].float()

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states [B, L, H] of right-padded `input_ids` [B, L]."""
        x = F.embedding(input_ids, self.embed)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        cos, sin = self.rotary(positions)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.head)

    # -- PEFT layout --------------------------------------------------------------

    def _peft_projections(self) -> Iterator[tuple[str, Projection]]:
        """Each projection that carries LoRA factors, with its PEFT name prefix."""
        for i, layer in enumerate(self.layers):
            for name, proj in layer.proj.items():
                if proj.lora_A is None or proj.lora_B is None:
                    continue
                group = "self_attn" if name in ATTENTION_MODULES else "mlp"
                yield f"base_model.model.model.layers.{i}.{group}.{name}", proj

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The LoRA factors under PEFT's names (lora_A [r, in], lora_B [out, r])."""
        state = {}
        for prefix, proj in self._peft_projections():
            state[f"{prefix}.lora_A.weight"] = proj.lora_A.detach().cpu().contiguous()
            state[f"{prefix}.lora_B.weight"] = proj.lora_B.detach().cpu().contiguous()
        return state

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, proj in self._peft_projections():
            proj.lora_A.data.copy_(state[f"{prefix}.lora_A.weight"])
            proj.lora_B.data.copy_(state[f"{prefix}.lora_B.weight"])

    def save_adapter(self, directory: Path, base_model: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.spec.rank,
            "lora_alpha": self.spec.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": list(self.spec.target_modules),
            "base_model_name_or_path": base_model,
            "inference_mode": True,
        }
        save_file(self.adapter_state(), str(directory / ADAPTER_WEIGHTS))
        (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))


def read_adapter(directory: Path) -> tuple[LoraSpec, dict[str, torch.Tensor]]:
    """The spec and factors of an adapter saved by `LoraModel.save_adapter` (or by peft)."""
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    spec = LoraSpec(
        rank=int(config["r"]), alpha=float(config["lora_alpha"]), target_modules=tuple(config["target_modules"])
    )
    return spec, load_file(str(directory / ADAPTER_WEIGHTS))
