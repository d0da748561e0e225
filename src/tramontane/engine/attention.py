"""Paged attention over a block-structured KV cache.

Each layer's cache is a flat pool of slots `[num_blocks * block_size, kv_heads, head_dim]`;
a sequence owns whole blocks, listed in its block table. A step writes the new tokens'
K/V into their slots and attends to each sequence's context through its slot list: on
the CPU in float32 with our kernels (cpu_kernels), elsewhere by gathering the context and
running one batched scaled-dot-product attention with an additive bias that encodes
causality, padding and the sliding window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import cpu_kernels


@dataclass
class AttentionMetadata:
    # Where this step's K/V go: one slot per real (non-padding) query token.
    slot_mapping: torch.Tensor  # [num_real_tokens]
    # Positions of the real tokens in the flattened [B * Lq] batch; None when no padding.
    real_token_index: torch.Tensor | None
    # Cache slots forming each sequence's context, padded to the longest.
    key_slots: torch.Tensor  # [B, Lk]
    # 0 where query i of sequence b may attend key j, -inf elsewhere; None when every key
    # is visible. Built once per step as float: a boolean mask would be converted by
    # every layer's attention call.
    attn_bias: torch.Tensor | None  # [B, 1, Lq, Lk]
    # Keys of each sequence (the first context_lens[b] of key_slots[b]), and the
    # sliding window: what decode_attention reads instead of the bias.
    context_lens: torch.Tensor  # [B]
    sliding_window: int | None
    # Each real query token's sequence (row of key_slots) and how many keys it sees.
    token_seqs: torch.Tensor  # [num_real_tokens]
    token_lens: torch.Tensor  # [num_real_tokens]
    # Set by the model for a decode step that our CPU kernels run (kernels_fit).
    decode: cpu_kernels.DecodeStep | None = None
    # Where some layers slide and others see the whole context (Gemma 3): the sliding
    # layers' metadata; this one is then the full layers'.
    local: AttentionMetadata | None = None


def build_metadata(
    positions: list[list[int]],
    block_tables: list[list[int]],
    block_size: int,
    sliding_window: int | None,
    device: torch.device,
) -> AttentionMetadata:
    """Metadata for a batch where sequence b computes tokens at `positions[b]`
    (consecutive) and attends to everything up to its last position."""
    batch = len(positions)
    max_q = max(len(p) for p in positions)
    ctx_lens = [p[-1] + 1 for p in positions]
    max_k = max(ctx_lens)

    tables = torch.zeros(batch, max(len(t) for t in block_tables), dtype=torch.long)
    for b, table in enumerate(block_tables):
        tables[b, : len(table)] = torch.tensor(table, dtype=torch.long)
    key_pos = torch.arange(max_k)
    key_slots = tables[:, key_pos // block_size] * block_size + key_pos % block_size
    key_slots = torch.where(key_pos[None, :] < torch.tensor(ctx_lens)[:, None], key_slots, 0)

    q_pos = torch.full((batch, max_q), -1, dtype=torch.long)
    for b, p in enumerate(positions):
        q_pos[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    real = q_pos >= 0
    flat_real = real.flatten()
    slot_of_query = tables.gather(1, (q_pos.clamp(min=0) // block_size)) * block_size + q_pos.clamp(
        min=0
    ) % block_size
    slot_mapping = slot_of_query.flatten()[flat_real]
    real_index = None if bool(flat_real.all()) else flat_real.nonzero().squeeze(1)

    bias = None
    needs_mask = not (batch == 1 and max_q == 1 and sliding_window is None)
    if needs_mask:
        kp = key_pos[None, None, :]
        qp = q_pos[:, :, None]
        mask = kp <= qp
        if sliding_window is not None:
            mask &= kp > qp - sliding_window
        # Padding queries see key 0 only, so softmax never meets an all-masked row.
        mask |= (~real)[:, :, None] & (kp == 0)
        bias = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf")).unsqueeze(1)
    return AttentionMetadata(
        slot_mapping=slot_mapping.to(device),
        real_token_index=None if real_index is None else real_index.to(device),
        key_slots=key_slots.to(device),
        attn_bias=None if bias is None else bias.to(device),
        context_lens=torch.tensor(ctx_lens, dtype=torch.long, device=device),
        sliding_window=sliding_window,
        token_seqs=torch.arange(batch)[:, None].expand(batch, max_q).flatten()[flat_real].to(device),
        token_lens=(q_pos.flatten()[flat_real] + 1).to(device),
    )


def paged_attention(
    q: torch.Tensor,  # [B, Lq, H, D]
    k: torch.Tensor,  # [B, Lq, KVH, D]
    v: torch.Tensor,
    k_cache: torch.Tensor,  # [slots, KVH, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    k_new = k.reshape(-1, kv_heads, head_dim)
    v_new = v.reshape(-1, kv_heads, head_dim)
    if meta.real_token_index is not None:
        k_new = k_new.index_select(0, meta.real_token_index)
        v_new = v_new.index_select(0, meta.real_token_index)
    k_cache.index_copy_(0, meta.slot_mapping, k_new.to(k_cache.dtype))
    v_cache.index_copy_(0, meta.slot_mapping, v_new.to(v_cache.dtype))

    if kernels_fit(q, k_cache):
        # Our kernel computes each query on its own: a prompt gives the same keys and
        # logits whether computed whole or after a prefix-cache hit (PyTorch's attention
        # blocks its sums by the number of queries, and 8-bit activations turn its last-bit
        # differences into different tokens).
        q_real = q.reshape(-1, heads, head_dim)
        if meta.real_token_index is not None:
            q_real = q_real.index_select(0, meta.real_token_index)
        out = cpu_kernels.attention_prefill(
            q_real, k_cache, v_cache, meta.key_slots, meta.token_seqs, meta.token_lens, meta.sliding_window, scale
        )
        if meta.real_token_index is not None:
            out = torch.zeros(batch * q_len, heads * head_dim).index_copy_(0, meta.real_token_index, out)
        return out.view(batch, q_len, heads * head_dim)
    # index_select on the flat slot list: far faster on CPU than advanced indexing.
    flat_slots = meta.key_slots.flatten()
    keys = k_cache.index_select(0, flat_slots).view(batch, -1, kv_heads, head_dim).to(q.dtype)
    values = v_cache.index_select(0, flat_slots).view(batch, -1, kv_heads, head_dim).to(q.dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        attn_mask=meta.attn_bias,
        scale=scale,
        enable_gqa=heads != kv_heads,
    )
    return out.transpose(1, 2).reshape(batch, q_len, heads * head_dim)


def kernels_fit(x: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether our attention kernels run (decode_attention, and paged_attention's
    kernel path): on the CPU in float32, with the kernels built."""
    return x.device.type == "cpu" and x.dtype == k_cache.dtype == torch.float32 and cpu_kernels.available()


def decode_attention(
    qkv: torch.Tensor,  # [B, 1, (H + 2 * KVH) * D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
) -> torch.Tensor:
    """RoPE, the cache write and attention of a decode step in one kernel call: it reads
    the keys through the slot list where they lie (no gathered copy, no mask) on the
    thread pool the matmuls use, where the PyTorch path takes a dozen operators and
    wakes OpenMP's threads for its attention. Returns [B, 1, H * D]."""
    batch = qkv.shape[0]
    return cpu_kernels.attention_decode(qkv.view(batch, -1), meta.decode, k_cache, v_cache).view(batch, 1, -1)
