"""The Llama / Mistral / Mixtral decoder on GPUs.

The same architecture as engine/model.py, laid out for accelerators: a step's tokens
are one flat batch [T, hidden] (no padding between sequences: a 512-token prompt
chunk and 200 decodes are 712 rows), attention is FlexAttention over the paged cache
(paged_flex.py), experts run as grouped matmuls (moe.py), linears may be FP8 or int4
(quant.py), and every layer can be split across tensor-parallel ranks (parallel.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ModelLoadError
from ..layers import RMSNorm, RotaryEmbedding, apply_rope
from .moe import GroupedMoE
from .paged_flex import AttentionFn, FlexMetadata, paged_flex_attention, write_kv
from .parallel import Parallel, check_divisible
from .quant import GPULinear


class WeightSource:
    """Checkpoint tensors (HF names) handed out converted and sliced for this rank,
    each moved to the device on its own (the whole model is never copied twice)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], device: torch.device, parallel: Parallel):
        self.tensors = tensors
        self.device = device
        self.parallel = parallel

    def get(self, name: str, shard_dim: int | None = None) -> torch.Tensor:
        tensor = self.tensors[name]
        if shard_dim is not None:
            tensor = self.parallel.shard(tensor, shard_dim)
        return tensor.to(self.device)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, src: WeightSource, prefix: str, quant: str, dtype: torch.dtype):
        super().__init__()
        world = src.parallel.world
        self.n_heads = cfg.num_attention_heads // world
        self.n_kv_heads = cfg.num_key_value_heads // world
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        qkv = torch.cat([src.get(f"{prefix}.{p}_proj.weight", 0) for p in "qkv"])
        self.qkv_proj = GPULinear(qkv, quant, dtype)
        self.o_proj = GPULinear(src.get(f"{prefix}.o_proj.weight", 1), quant, dtype)
        self.parallel = src.parallel
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, x, cos, sin, meta: FlexMetadata, attention: AttentionFn, kernel_options) -> torch.Tensor:
        tokens = x.shape[0]
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        qkv = self.qkv_proj(x)
        qk, v = qkv.split([q_size + kv_size, kv_size], dim=-1)
        qk = apply_rope(qk.view(tokens, self.n_heads + self.n_kv_heads, self.head_dim), cos, sin)
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=1)
        write_kv(self.k_cache, self.v_cache, k, v.view(tokens, self.n_kv_heads, self.head_dim), meta.slot_mapping)
        out = paged_flex_attention(q, self.k_cache, self.v_cache, meta, self.scale, attention, kernel_options)
        return self.parallel.all_reduce(self.o_proj(out))


class MLP(nn.Module):
    def __init__(self, src: WeightSource, prefix: str, quant: str, dtype: torch.dtype):
        super().__init__()
        gate, up = src.get(f"{prefix}.gate_proj.weight", 0), src.get(f"{prefix}.up_proj.weight", 0)
        self.ffn = gate.shape[0]
        self.gate_up_proj = GPULinear(torch.cat([gate, up]), quant, dtype)
        self.down_proj = GPULinear(src.get(f"{prefix}.down_proj.weight", 1), quant, dtype)
        self.parallel = src.parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.ffn, dim=-1)
        return self.parallel.all_reduce(self.down_proj(torch.nn.functional.silu(gate) * up))


def _moe(cfg: ModelConfig, src: WeightSource, prefix: str, dtype: torch.dtype) -> GroupedMoE:
    # Experts stay in the model dtype: grouped kernels take bf16 (no FP8/int4 yet).
    experts = range(cfg.num_local_experts)
    w13 = torch.stack([
        torch.cat([src.get(f"{prefix}.experts.{e}.w1.weight", 0), src.get(f"{prefix}.experts.{e}.w3.weight", 0)])
        for e in experts
    ])
    w2 = torch.stack([src.get(f"{prefix}.experts.{e}.w2.weight", 1) for e in experts])
    return GroupedMoE(src.get(f"{prefix}.gate.weight"), w13, w2, cfg.num_experts_per_tok, dtype, src.parallel)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, src: WeightSource, index: int, quant: str, dtype: torch.dtype):
        super().__init__()
        prefix = f"model.layers.{index}"
        self.input_layernorm = _norm(cfg, src.get(f"{prefix}.input_layernorm.weight"), dtype)
        self.post_attention_layernorm = _norm(cfg, src.get(f"{prefix}.post_attention_layernorm.weight"), dtype)
        self.self_attn = Attention(cfg, src, f"{prefix}.self_attn", quant, dtype)
        if cfg.is_moe:
            self.mlp: nn.Module = _moe(cfg, src, f"{prefix}.block_sparse_moe", dtype)
        else:
            self.mlp = MLP(src, f"{prefix}.mlp", quant, dtype)

    def forward(self, x, cos, sin, meta, attention, kernel_options):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, attention, kernel_options)
        return x + self.mlp(self.post_attention_layernorm(x))


def _norm(cfg: ModelConfig, weight: torch.Tensor, dtype: torch.dtype) -> RMSNorm:
    norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    norm.weight.data = weight.to(dtype)
    return norm


class GPUCausalLM(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        tensors: Mapping[str, torch.Tensor],
        quantization: str,
        dtype: torch.dtype,
        device: torch.device,
        parallel: Parallel | None = None,
    ):
        super().__init__()
        parallel = parallel or Parallel()
        if cfg.qk_norm or not cfg.norm_topk_prob:
            raise ModelLoadError(f"{cfg.architecture} models run on the CPU path only for now")
        check_divisible(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size,
                        cfg.vocab_size, parallel.world)
        self.config = cfg
        self.dtype = dtype
        self.parallel = parallel
        src = WeightSource(tensors, device, parallel)
        self.embed_tokens = nn.Embedding.from_pretrained(src.get("model.embed_tokens.weight").to(dtype), freeze=True)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.rotary.to(device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, src, i, quantization, dtype) for i in range(cfg.num_hidden_layers))
        self.norm = _norm(cfg, src.get("model.norm.weight"), dtype)
        head_name = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        # The head stays in the model dtype whatever the quantization: token choice
        # is the most sensitive place to round.
        self.lm_head = GPULinear(src.get(head_name, 0), "none", dtype)

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn for layer in self.layers]

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        meta: FlexMetadata,
        logits_index: torch.Tensor,  # rows of the flat batch whose logits are wanted
        attention: AttentionFn,
        kernel_options: dict | None = None,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos = self.rotary.cos[positions].unsqueeze(1).to(self.dtype)  # [T, 1, D]
        sin = self.rotary.sin[positions].unsqueeze(1).to(self.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, meta, attention, kernel_options)
        x = self.norm(x.index_select(0, logits_index))
        return self.parallel.all_gather_last(self.lm_head(x)).float()
