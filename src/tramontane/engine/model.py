"""Llama / Mistral / Mixtral / Qwen3 decoder, written to read like the papers.

One class covers the family: grouped-query attention with RoPE (optionally scaled),
an optional sliding window and optional per-head RMSNorm of Q and K (Qwen3), then
either a SwiGLU MLP or a sparse mixture of SwiGLU experts chosen per token by a
top-k router (Mixtral, Qwen3-MoE).
"""

from __future__ import annotations

import dataclasses
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .attention import AttentionMetadata, decode_attention, kernels_fit, paged_attention
from .config import ModelConfig
from .layers import Linear, RMSNorm, RotaryEmbedding, apply_rope
from .lora import LoRABatch, LoRAStack
from .vision import VisionModel

# Rows from which the bf16 head is slower than the tied f32 embedding (see CausalLM.project):
# measured 6.5 vs 12 ms at 1 row, 26 vs 28 ms at 4, 109 vs 46 ms at 16 (49152x576, AVX2).
WIDE_HEAD_MIN_ROWS = 4


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], quant: str):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.attention_scale or cfg.head_dim**-0.5
        # One matmul for Q, K and V: a third of the kernel launches on the hot path.
        self.qkv_proj = Linear(torch.cat([w["q_proj"], w["k_proj"], w["v_proj"]]), quant)
        self.o_proj = Linear(w["o_proj"], quant)
        self.qkv_lora: LoRAStack | None = None
        self.o_lora: LoRAStack | None = None
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.q_norm.weight.copy_(w["q_norm"])
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm.weight.copy_(w["k_norm"])
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, x, cos, sin, meta: AttentionMetadata, lora: LoRABatch | None) -> torch.Tensor:
        batch, length, _ = x.shape
        q_size = self.n_heads * self.head_dim
        kv_size = self.n_kv_heads * self.head_dim
        qkv = self.qkv_proj(x)
        if lora is not None and self.qkv_lora is not None:
            self.qkv_lora.apply(qkv, x, lora)
        if self.q_norm is not None and self.k_norm is not None:
            # In place, so that the decode kernel below rotates the normalised heads.
            q, k = qkv[..., :q_size], qkv[..., q_size : q_size + kv_size]
            q.copy_(self.q_norm(q.unflatten(-1, (self.n_heads, self.head_dim))).flatten(-2))
            k.copy_(self.k_norm(k.unflatten(-1, (self.n_kv_heads, self.head_dim))).flatten(-2))
        if meta.decode is not None:
            return self._project_out(decode_attention(qkv, self.k_cache, self.v_cache, meta), lora)
        # Q and K rotate as one tensor: half the rope kernels.
        qk, v = qkv.split([q_size + kv_size, kv_size], dim=-1)
        qk = apply_rope(qk.view(batch, length, self.n_heads + self.n_kv_heads, self.head_dim), cos, sin)
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=2)
        v = v.view(batch, length, self.n_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
        return self._project_out(out, lora)

    def _project_out(self, out: torch.Tensor, lora: LoRABatch | None) -> torch.Tensor:
        y = self.o_proj(out)
        if lora is not None and self.o_lora is not None:
            self.o_lora.apply(y, out, lora)
        return y


_ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}


class MLP(nn.Module):
    """A gated MLP: down(act(gate(x)) * up(x)), SwiGLU with act = silu."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, quant: str, act: str = "silu"):
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation {act!r}")
        self.act = act
        self.hidden = gate.shape[0]
        self.gate_up_proj = Linear(torch.cat([gate, up]), quant)
        self.down_proj = Linear(down, quant)
        self.gate_up_lora: LoRAStack | None = None
        self.down_lora: LoRAStack | None = None

    def forward(self, x: torch.Tensor, lora: LoRABatch | None = None) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if lora is not None and self.gate_up_lora is not None:
            self.gate_up_lora.apply(gate_up, x, lora)
        gate, up = gate_up.split(self.hidden, dim=-1)
        h = _ACTIVATIONS[self.act](gate) * up
        y = self.down_proj(h)
        if lora is not None and self.down_lora is not None:
            self.down_lora.apply(y, h, lora)
        return y


class SparseMoE(nn.Module):
    """Mixtral's mixture of experts: each token goes to its top-k experts, whose
    outputs are mixed by the renormalised router probabilities."""

    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], quant: str):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.renormalize = cfg.norm_topk_prob
        self.router = Linear(w["gate"], "none")
        self.experts = nn.ModuleList(
            MLP(w[f"experts.{e}.w1"], w[f"experts.{e}.w3"], w[f"experts.{e}.w2"], quant)
            for e in range(cfg.num_local_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs = F.softmax(self.router(tokens).float(), dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        # Group the (token, slot) pairs by expert so each expert runs once on its tokens.
        flat_expert = chosen.flatten()
        order = flat_expert.argsort()
        counts = torch.bincount(flat_expert, minlength=len(self.experts)).tolist()
        token_of_pair = order // self.top_k
        pair_weight = weights.flatten()[order]
        start = 0
        for expert, count in zip(self.experts, counts, strict=True):
            if count:
                idx = token_of_pair[start : start + count]
                y = expert(tokens.index_select(0, idx)) * pair_weight[start : start + count, None]
                out.index_add_(0, idx, y)
            start += count
        return out.view(shape)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], quant: str):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm.weight.copy_(w["input_layernorm.weight"])
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm.weight.copy_(w["post_attention_layernorm.weight"])
        attn = {k: w[f"self_attn.{k}.weight"] for k in ("q_proj", "k_proj", "v_proj", "o_proj")}
        if cfg.qk_norm:
            attn |= {k: w[f"self_attn.{k}.weight"] for k in ("q_norm", "k_norm")}
        self.self_attn = Attention(cfg, attn, quant)
        if cfg.is_moe:
            prefix = "block_sparse_moe."
            moe = {k[len(prefix) :].removesuffix(".weight"): v for k, v in w.items() if k.startswith(prefix)}
            self.mlp: nn.Module = SparseMoE(cfg, moe, quant)
        else:
            self.mlp = MLP(
                w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"], w["mlp.down_proj.weight"], quant, cfg.hidden_act
            )
        # Gemma 3: post_attention_layernorm normalises attention's output, and the MLP has
        # a norm on each side; elsewhere post_attention_layernorm is the MLP's input norm.
        self.sandwich = cfg.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.pre_feedforward_layernorm.weight.copy_(w["pre_feedforward_layernorm.weight"])
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_feedforward_layernorm.weight.copy_(w["post_feedforward_layernorm.weight"])

    def attach_lora(self, stacks: dict[str, LoRAStack]) -> None:
        """Give the projections their multi-LoRA slot weights (keyed by fused name)."""
        self.self_attn.qkv_lora = stacks["qkv_proj"]
        self.self_attn.o_lora = stacks["o_proj"]
        if isinstance(self.mlp, MLP):
            self.mlp.gate_up_lora = stacks["gate_up_proj"]
            self.mlp.down_lora = stacks["down_proj"]

    def forward(self, x, cos, sin, meta, lora: LoRABatch | None):
        if meta.decode is not None and lora is None and (spec := self.fused_decode_spec()) is not None:
            attn = self.self_attn
            cpu_kernels.dense_layer_decode(spec, x.view(x.shape[0], -1), meta.decode, attn.k_cache, attn.v_cache)
            return x
        if self.sandwich:
            x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, meta, lora))
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x), lora))
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, lora)
        h = self.post_attention_layernorm(x)
        return x + (self.mlp(h, lora) if isinstance(self.mlp, MLP) else self.mlp(h))

    def fused_decode_spec(self) -> tuple | None:
        """The weights' addresses for cpu_kernels.dense_layer_decode, which runs the
        whole layer in one call on a decode step; None where it cannot (a mixture of
        experts, weights not in our kernels' blocks). Kept outside the module, so that a
        saved (prepared) model never carries addresses."""
        if self not in _FUSED_SPECS:
            _FUSED_SPECS[self] = self._build_fused_decode_spec()
        return _FUSED_SPECS[self]

    def _build_fused_decode_spec(self) -> tuple | None:
        # The kernel runs a plain pre-norm SwiGLU layer: no Q/K norms, sandwich norms or GELU.
        if not isinstance(self.mlp, MLP) or self.self_attn.q_norm is not None or self.sandwich:
            return None
        if self.mlp.act != "silu":
            return None
        linears = [self.self_attn.qkv_proj, self.self_attn.o_proj, self.mlp.gate_up_proj, self.mlp.down_proj]
        if any(linear.kernel not in ("q4_1", "q8_0") for linear in linears):
            return None
        norms = [self.input_layernorm, self.post_attention_layernorm]
        if any(norm.weight.dtype != torch.float32 for norm in norms):
            return None
        blocks = [(lin.qs, lin.d, lin.m) if lin.kernel == "q4_1" else (lin.qs, lin.d) for lin in linears]
        hidden = self.input_layernorm.weight.shape[0]
        return cpu_kernels.dense_layer_spec(
            hidden, self.mlp.hidden, self.input_layernorm.eps, norms[0].weight, norms[1].weight, blocks
        )


# DecoderLayer -> its fused_decode_spec, for as long as the layer lives.
_FUSED_SPECS: weakref.WeakKeyDictionary[DecoderLayer, tuple | None] = weakref.WeakKeyDictionary()


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, tensors: dict[str, torch.Tensor], quantization: str = "none",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = cfg
        self.dtype = dtype
        embed = tensors["model.embed_tokens.weight"]
        self.embed_tokens = nn.Embedding.from_pretrained(embed.to(dtype), freeze=True)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        # Gemma 3: the sliding layers turn at a base of their own, unscaled.
        self.local_rotary = (
            RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_local_theta, None)
            if cfg.rope_local_theta is not None
            else None
        )
        self.sliding = [cfg.is_sliding(i) for i in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList()
        for i in range(cfg.num_hidden_layers):
            prefix = f"model.layers.{i}."
            layer_w = {k[len(prefix) :]: v.to(dtype) for k, v in tensors.items() if k.startswith(prefix)}
            self.layers.append(DecoderLayer(cfg, layer_w, quantization))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm.weight.copy_(tensors["model.norm.weight"])
        head = embed if cfg.tie_word_embeddings else tensors["lm_head.weight"]
        # 4-bit output projections wreck small models' token choice, and so does int8
        # with fbgemm's one scale per activation row. 8-bit blocks against activations
        # scaled per block of 32 (our kernels: GGUF's Q8_0, as llama.cpp runs this head)
        # keep it, and so does bf16 where our kernels do not run.
        if quantization in ("int4", "int8"):
            head_quantization = "int8" if cpu_kernels.available() else "bf16"
        else:
            head_quantization = quantization
        self.lm_head = Linear(head.to(dtype), head_quantization)
        # Not self.to(dtype): that would also cast bf16/int4-scale weight buffers.
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.weight.data = module.weight.data.to(dtype)
        # Built after that cast: the vision model stays in float32 whatever the text
        # model's precision (it runs once per image, not once per token).
        self.vision = VisionModel(cfg.vision, tensors) if cfg.vision is not None else None

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn for layer in self.layers]

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L]
        positions: torch.Tensor,  # [B, L]
        meta: AttentionMetadata,
        logits_index: torch.Tensor,  # flat indices of the tokens whose logits are wanted
        lora: LoRABatch | None = None,  # each row's adapter slot, None when no row has one
        # Images' embeddings and the flat [B * L] indices of the [IMG] tokens they replace.
        image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        if self.config.embedding_scale != 1.0:
            x = x * torch.tensor(self.config.embedding_scale, dtype=x.dtype)
        if image_embeds is not None:
            index, embeds = image_embeds
            x.view(-1, x.shape[-1]).index_copy_(0, index, embeds.to(x.dtype))
        full = self._layer_inputs(x, positions, meta, self.rotary)
        local = full
        if self.local_rotary is not None or meta.local is not None:
            local = self._layer_inputs(x, positions, meta.local or meta, self.local_rotary or self.rotary)
        for layer, sliding in zip(self.layers, self.sliding, strict=True):
            cos, sin, layer_meta = local if sliding else full
            x = layer(x, cos, sin, layer_meta, lora)
        # Only the last token of each sequence needs the (large) vocabulary projection.
        x = x.reshape(-1, x.shape[-1]).index_select(0, logits_index)
        return self.project(self.norm(x)).float()

    def _layer_inputs(
        self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, rotary: RotaryEmbedding
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """The rotary tables and attention metadata of the layers that share `rotary` and `meta`."""
        cos, sin = rotary(positions)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if meta.attn_bias is not None:
            meta = dataclasses.replace(meta, attn_bias=meta.attn_bias.to(x.dtype))
        attn = self.layers[0].self_attn
        if positions.shape[1] == 1 and kernels_fit(x, attn.k_cache):
            rows = positions.shape[0]
            step = cpu_kernels.DecodeStep(
                attn.n_heads, cos.view(rows, -1), sin.view(rows, -1), meta.slot_mapping, meta.key_slots,
                meta.context_lens, meta.sliding_window, attn.scale,
            )
            meta = dataclasses.replace(meta, decode=step)
        return cos, sin, meta

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The vocabulary projection of `x` [rows, hidden]. A bf16 head halves what one
        row reads, but CPUs without bf16 arithmetic widen it tile by tile: from a few
        rows up (a batch of decodes) the f32 matmul is faster.
        A tied head has its f32 copy at hand in the embedding table."""
        embedding = self.embed_tokens.weight
        if (
            x.shape[0] >= WIDE_HEAD_MIN_ROWS
            and self.lm_head.quantization == "bf16"
            and self.config.tie_word_embeddings
            and embedding.dtype == torch.float32
        ):
            return F.linear(x, embedding)
        return self.lm_head(x)
