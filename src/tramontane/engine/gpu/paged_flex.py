"""Paged attention through PyTorch's FlexAttention, reading the KV cache in place.

Each layer's cache is `[kv_heads, slots, head_dim]`, slots grouped in blocks of
`block_size`; a sequence owns whole blocks, listed in its block table (blocks of a
shared prompt prefix are shared). FlexAttention sees the whole pool as one key
sequence of `slots` keys and the step's queries as one sequence in which every
sequence's queries start on a fresh query block (`q_block` rows, padded). The block
mask is built straight from the block tables: query block r of sequence s lists the
physical KV blocks of s that it may see, split into full blocks (every key visible
to every query, no mask evaluated) and partial ones (the diagonal, the window's edge,
the block being filled), where `mask_mod` decides key by key. So a query block reads
its own sequence's blocks and nothing else, whatever the batch, and prefill, chunked
prefill after a prefix-cache hit, and decode are the same call.

`mask_mod` is exact on its own (it checks the key's block belongs to the query's
sequence and where it lies in it), as FlexAttention's contract asks: the block mask
only tells it which blocks to skip.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

# Query rows per FlexAttention query block: a decode step pads each sequence's one
# query to this many rows (cheap: decode attention is bound by reading the keys,
# which each sequence then reads once).
DEFAULT_Q_BLOCK = 16


# The query-major lists FlexAttention's backward pass reads are not built where this
# PyTorch can skip them (inference only; they cost a sort over every block).
_FORWARD_ONLY = (
    {"compute_q_blocks": False}
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters
    else {}
)


@dataclass
class StepShape:
    """What the host knows about one sequence of a step: its first new position and
    how many tokens it computes, and its block table."""

    start: int
    count: int
    block_table: Sequence[int]


@dataclass
class FlexMetadata:
    """One step's attention inputs. Every field is a tensor of a shape fixed by the
    batch's padded layout, so a CUDA graph can hold a copy and refill it in place."""

    # Cache slot of each of the step's T tokens (flat, sequence after sequence).
    slot_mapping: torch.Tensor  # [T]
    # Row of each token in the padded query layout FlexAttention sees.
    q_rows: torch.Tensor  # [T]
    # Flat index of the last token of each sequence (the rows whose logits are wanted).
    last_token_index: torch.Tensor  # [S]
    # What mask_mod reads: each padded row's sequence and position (-1: padding), and
    # each sequence's logical index of every physical block (-1: not its own).
    q_seq: torch.Tensor  # [P]
    q_pos: torch.Tensor  # [P]
    logical: torch.Tensor  # [S, num_blocks + 1]
    # BlockMask's lists, [1, 1, P / q_block, num_blocks].
    kv_num: torch.Tensor
    kv_idx: torch.Tensor
    full_num: torch.Tensor
    full_idx: torch.Tensor
    block_size: int
    q_block: int
    sliding_window: int | None
    _block_mask: BlockMask | None = None

    @property
    def padded_len(self) -> int:
        return self.q_seq.shape[0]

    @property
    def num_slots(self) -> int:
        return self.kv_idx.shape[-1] * self.block_size

    @property
    def block_mask(self) -> BlockMask:
        """The step's BlockMask, its mask_mod bound to this step's tensors."""
        tensors, mask_mod = shared_mask_mod(self.block_size, self.sliding_window)
        tensors.bind(self)
        if self._block_mask is None:
            self._block_mask = BlockMask.from_kv_blocks(
                self.kv_num, self.kv_idx, self.full_num, self.full_idx,
                BLOCK_SIZE=(self.q_block, self.block_size), mask_mod=mask_mod,
                seq_lengths=(self.padded_len, self.num_slots), **_FORWARD_ONLY,
            )
        return self._block_mask

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "torch.Tensor"}

    def copy_(self, other: FlexMetadata) -> None:
        """Refill these tensors in place with `other`'s (same padded shapes)."""
        for name, tensor in self.tensors().items():
            tensor.copy_(getattr(other, name), non_blocking=True)


def padded_rows(counts: Sequence[int], q_block: int) -> list[int]:
    """Where each sequence's queries start in the padded layout: a whole number of
    query blocks per sequence."""
    starts, at = [], 0
    for n in counts:
        starts.append(at)
        at += -(-n // q_block) * q_block
    starts.append(at)
    return starts


def build_flex_metadata(
    shapes: Sequence[StepShape],
    block_size: int,
    num_slots: int,
    sliding_window: int | None,
    device: torch.device,
    q_block: int = DEFAULT_Q_BLOCK,
    bucketed: bool = False,
) -> FlexMetadata:
    """Metadata of one step. The host computes what is per token and per query
    block (small); the block lists and each sequence's block map, which grow with
    the cache, are built on the device from the block tables.

    `bucketed` rounds the padded query rows and the sequence count up to powers of
    two, so that a kernel compiled for static shapes serves every step from a dozen
    compilations; the extra query blocks list no keys, so they cost nothing."""
    counts = [s.count for s in shapes]
    row_start = padded_rows(counts, q_block)
    padded_len = row_start[-1]
    num_seqs = len(shapes)
    if bucketed:
        padded_len = max(_next_power_of_2(padded_len), q_block)
        num_seqs = _next_power_of_2(num_seqs)
    width = max(len(s.block_table) for s in shapes)
    tables = torch.zeros(num_seqs, width, dtype=torch.long)
    for i, s in enumerate(shapes):
        tables[i, : len(s.block_table)] = torch.as_tensor(list(s.block_table), dtype=torch.long)
    nblocks = torch.zeros(num_seqs, dtype=torch.long)
    nblocks[: len(shapes)] = torch.tensor([len(s.block_table) for s in shapes])
    starts = torch.tensor([s.start for s in shapes])
    count_t = torch.tensor(counts)

    # Per real token: sequence, position, slot, padded row.
    seq_of_token = torch.repeat_interleave(torch.arange(len(shapes)), count_t)
    first_token = torch.cumsum(count_t, 0) - count_t
    offset = torch.arange(int(count_t.sum())) - first_token[seq_of_token]
    positions = starts[seq_of_token] + offset
    slot_mapping = tables[seq_of_token, positions // block_size] * block_size + positions % block_size
    q_rows = torch.tensor(row_start[:-1])[seq_of_token] + offset

    # Per padded row: its sequence and position (-1: padding, which sees nothing).
    rows_per_seq = torch.tensor(row_start[1:]) - torch.tensor(row_start[:-1])
    q_seq = torch.zeros(padded_len, dtype=torch.long)
    q_seq[: row_start[-1]] = torch.repeat_interleave(torch.arange(len(shapes)), rows_per_seq)
    q_pos = torch.full((padded_len,), -1, dtype=torch.long)
    q_pos[q_rows] = positions

    # Per query block: its sequence and first and last positions (-1 past the real ones).
    num_qblocks = padded_len // q_block
    qblock_seq = q_seq[::q_block].clone()
    qblock_first = q_pos[::q_block].clone()
    qblock_last = torch.full((num_qblocks,), -1, dtype=torch.long)
    qblock_last.scatter_reduce_(0, q_rows // q_block, positions, reduce="amax")

    on = {"device": device, "non_blocking": True}
    tables, nblocks = tables.to(**on), nblocks.to(**on)
    num_blocks = num_slots // block_size
    kv_num, kv_idx, full_num, full_idx = _block_lists(
        qblock_seq.to(**on), qblock_first.to(**on), qblock_last.to(**on), tables, nblocks,
        block_size, sliding_window, num_blocks,
    )
    return FlexMetadata(
        slot_mapping=slot_mapping.to(**on),
        q_rows=q_rows.to(**on),
        last_token_index=(torch.cumsum(count_t, 0) - 1).to(**on),
        q_seq=q_seq.to(**on),
        q_pos=q_pos.to(**on),
        logical=_logical_blocks(tables, nblocks, num_blocks),
        kv_num=kv_num,
        kv_idx=kv_idx,
        full_num=full_num,
        full_idx=full_idx,
        block_size=block_size,
        q_block=q_block,
        sliding_window=sliding_window,
    )


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _logical_blocks(tables: torch.Tensor, nblocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """[S, num_blocks + 1]: each sequence's logical index of every physical block, -1
    where the block is not its own. Built where the tables are (one scatter on the
    device); the extra last column takes the tables' padding."""
    num_seqs, width = tables.shape
    column = torch.arange(width, device=tables.device)[None, :].expand(num_seqs, width)
    target = torch.where(column < nblocks[:, None], tables, num_blocks)
    logical = torch.full((num_seqs, num_blocks + 1), -1, dtype=torch.int32, device=tables.device)
    return logical.scatter_(1, target, column.to(torch.int32))


def _block_lists(seq_idx, first, last, tables, nblocks, block_size, window, num_blocks):
    """kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, shaped
    [1, 1, query blocks, num_blocks]: for each query block (of sequence seq_idx,
    positions first..last), the physical blocks it sees in part, then those it sees
    whole, each list first in its row."""
    p0, p1 = first[:, None], last[:, None]
    logical = torch.arange(tables.shape[1], device=tables.device)[None, :]
    lo = logical * block_size  # first key position of the block
    hi = lo + block_size - 1
    owned = logical < nblocks[seq_idx][:, None]
    seen = owned & (lo <= p1)
    full = owned & (hi <= p0)
    if window is not None:
        seen &= hi > p0 - window
        full &= lo > p1 - window
    partial = seen & ~full
    physical = tables[seq_idx]
    return (*_front(partial, physical, num_blocks), *_front(full, physical, num_blocks))


def _front(chosen: torch.Tensor, physical: torch.Tensor, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen physical blocks of each row moved to its front, in order, and their
    count. Rows are as wide as the pool has blocks, as BlockMask expects."""
    rows, width = chosen.shape
    key = torch.where(chosen, 0, width) + torch.arange(width, device=chosen.device)[None, :]
    order = key.argsort(dim=1)
    indices = torch.zeros(rows, num_blocks, dtype=torch.int32, device=chosen.device)
    indices[:, :width] = physical.gather(1, order)
    return chosen.sum(1).to(torch.int32)[None, None], indices[None, None]


class MaskTensors:
    """What mask_mod reads, rebound to each step's tensors before its attention runs.
    One mask_mod function serves every step: torch.compile guards on the function
    and on these tensors' shapes, so a fresh closure per step would recompile (or,
    eagerly, retrace) flex attention every step."""

    def __init__(self) -> None:
        self.q_seq = self.q_pos = self.logical = torch.empty(0, dtype=torch.long)

    def bind(self, meta: FlexMetadata) -> None:
        self.q_seq, self.q_pos, self.logical = meta.q_seq, meta.q_pos, meta.logical


@functools.cache
def shared_mask_mod(block_size: int, window: int | None) -> tuple[MaskTensors, Callable]:
    """Key `kv_idx` (a cache slot) is visible to padded query row `q_idx` when its
    block belongs to the row's sequence, at or before the row's position and, with a
    sliding window, within it. Padding rows (position -1) see nothing."""
    tensors = MaskTensors()

    def mask_mod(b, h, q_idx, kv_idx):
        seq = tensors.q_seq[q_idx]
        pos = tensors.q_pos[q_idx]
        block = tensors.logical[seq, kv_idx // block_size]
        key_pos = block * block_size + kv_idx % block_size
        visible = (block >= 0) & (key_pos <= pos)
        if window is not None:
            visible = visible & (key_pos > pos - window)
        return visible

    return tensors, mask_mod


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store the step's keys and values [T, kv_heads, D] in their slots."""
    k_cache.index_copy_(1, slot_mapping, k.transpose(0, 1).to(k_cache.dtype))
    v_cache.index_copy_(1, slot_mapping, v.transpose(0, 1).to(v_cache.dtype))


AttentionFn = Callable[..., torch.Tensor]


def dense_attention(q, k, v, block_mask: BlockMask, scale: float, enable_gqa: bool, kernel_options=None):
    """flex_attention's semantics computed densely: the mask evaluated once over every
    (query row, cache slot) pair, then one scaled-dot-product attention. What eager
    flex_attention does too, without tracing mask_mod through torch.compile on every
    new shape; for CPU runs of the GPU path on small caches (tests), never CUDA."""
    rows, slots = q.shape[-2], k.shape[-2]
    zero = torch.zeros((), dtype=torch.long, device=q.device)
    q_idx = torch.arange(rows, device=q.device)[:, None]
    kv_idx = torch.arange(slots, device=q.device)[None, :]
    mask = block_mask.mask_mod(zero, zero, q_idx, kv_idx)
    # Padding rows see no key: let them see all (their output is dropped), not NaN.
    mask = mask | ~mask.any(dim=1, keepdim=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=enable_gqa)


def paged_flex_attention(
    q: torch.Tensor,  # [T, H, D], already rotated
    k_cache: torch.Tensor,  # [KVH, slots, D], holding this step's keys too
    v_cache: torch.Tensor,
    meta: FlexMetadata,
    scale: float,
    attention: AttentionFn = flex_attention,
    kernel_options: dict | None = None,
) -> torch.Tensor:
    """Attention of the step's queries over their sequences' cached keys. Returns
    [T, H * D]. `attention` is flex_attention, compiled (the real kernels: CUDA, and
    the CPU template) or eager, or dense_attention (a reference for tiny caches)."""
    tokens, heads, head_dim = q.shape
    padded = q.new_zeros(meta.padded_len, heads, head_dim).index_copy_(0, meta.q_rows, q)
    block_mask = meta.block_mask  # binds mask_mod to this step
    out = attention(
        padded.transpose(0, 1).unsqueeze(0),
        k_cache.unsqueeze(0),
        v_cache.unsqueeze(0),
        block_mask=block_mask,
        scale=scale,
        enable_gqa=heads != k_cache.shape[0],
        kernel_options=kernel_options,
    )
    return out[0].transpose(0, 1).index_select(0, meta.q_rows).reshape(tokens, heads * head_dim)
