"""FlexAttention over the paged cache against the engine's existing paged attention.

Eager flex_attention evaluates mask_mod densely (its reference path), so these tests
check the mask's semantics; the block lists (which keys the compiled kernels visit)
are checked against the dense mask separately, and one test runs the compiled
kernel (CPU template of torch.compile)."""

from __future__ import annotations

import pytest
import torch

from tramontane.engine.attention import build_metadata, paged_attention
from tramontane.engine.gpu.paged_flex import StepShape, build_flex_metadata, paged_flex_attention, write_kv

H, KVH, D, BS, BLOCKS = 4, 2, 16, 4, 14

# Eager flex_attention warns that it is the unfused reference: that is what these use.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _steps():
    # A: a prompt from position 0; B: a chunk after a prefix-cache hit on A's first
    # two blocks (shared physical blocks 0 and 1); C: decode at position 9;
    # D: decode at position 0 (a one-token context).
    return [
        StepShape(start=0, count=7, block_table=[0, 1]),
        StepShape(start=8, count=5, block_table=[0, 1, 5, 6]),
        StepShape(start=9, count=1, block_table=[7, 3, 9]),
        StepShape(start=0, count=1, block_table=[12]),
    ]


def _reference(steps, q, k, v, cache_k, cache_v, window):
    """The engine's existing paged attention (padded [B, Lq] layout, cache [slots, KVH, D])."""
    positions = [list(range(s.start, s.start + s.count)) for s in steps]
    meta = build_metadata(positions, [list(s.block_table) for s in steps], BS, window, torch.device("cpu"))
    longest = max(s.count for s in steps)
    qp = torch.zeros(len(steps), longest, H, D)
    kp = torch.zeros(len(steps), longest, KVH, D)
    vp = torch.zeros(len(steps), longest, KVH, D)
    at = 0
    for b, s in enumerate(steps):
        qp[b, : s.count], kp[b, : s.count], vp[b, : s.count] = q[at : at + s.count], k[at : at + s.count], v[at : at + s.count]
        at += s.count
    out = paged_attention(qp, kp, vp, cache_k, cache_v, meta, D**-0.5)
    return torch.cat([out[b, : s.count] for b, s in enumerate(steps)])


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = sum(s.count for s in _steps())
    cache = torch.randn(2, BLOCKS * BS, KVH, D, generator=gen)
    q = torch.randn(tokens, H, D, generator=gen)
    k = torch.randn(tokens, KVH, D, generator=gen)
    v = torch.randn(tokens, KVH, D, generator=gen)
    return cache, q, k, v


@pytest.mark.parametrize("window", [None, 3, 6])
@pytest.mark.parametrize("q_block", [16, 4])
def test_flex_matches_existing_paged_attention(window, q_block):
    steps = _steps()
    cache, q, k, v = _inputs()
    ref_k, ref_v = cache[0].clone(), cache[1].clone()
    expected = _reference(steps, q, k, v, ref_k, ref_v, window)

    flex_k = cache[0].transpose(0, 1).contiguous()  # [KVH, slots, D]
    flex_v = cache[1].transpose(0, 1).contiguous()
    meta = build_flex_metadata(steps, BS, BLOCKS * BS, window, torch.device("cpu"), q_block=q_block)
    write_kv(flex_k, flex_v, k, v, meta.slot_mapping)
    assert torch.equal(flex_k.transpose(0, 1), ref_k)  # same slots written
    got = paged_flex_attention(q, flex_k, flex_v, meta, D**-0.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _dense_mask(steps, meta, window):
    """The visibility of every (padded row, slot) pair, from first principles."""
    from tramontane.engine.gpu.paged_flex import padded_rows

    rows = padded_rows([s.count for s in steps], 16)
    mask = torch.zeros(meta.padded_len, BLOCKS * BS, dtype=torch.bool)
    for i, s in enumerate(steps):
        for j in range(s.count):
            pos = s.start + j
            for key in range(pos + 1):
                if window is not None and key <= pos - window:
                    continue
                mask[rows[i] + j, s.block_table[key // BS] * BS + key % BS] = True
    return mask


@pytest.mark.parametrize("window", [None, 3])
def test_block_lists_cover_the_mask_and_full_blocks_are_full(window):
    steps = _steps()
    meta = build_flex_metadata(steps, BS, BLOCKS * BS, window, torch.device("cpu"), q_block=16)
    dense = _dense_mask(steps, meta, window)
    bm = meta.block_mask
    # The mask mod alone reproduces the dense mask.
    rows = torch.arange(meta.padded_len)[:, None]
    slots = torch.arange(BLOCKS * BS)[None, :]
    zero = torch.zeros((), dtype=torch.long)
    assert torch.equal(bm.mask_mod(zero, zero, rows, slots), dense)
    # Every visible key lies in a listed block; full blocks are wholly visible.
    listed = torch.zeros_like(dense)
    kv_num, kv_idx = bm.kv_num_blocks[0, 0], bm.kv_indices[0, 0]
    full_num, full_idx = bm.full_kv_num_blocks[0, 0], bm.full_kv_indices[0, 0]
    for qb in range(meta.padded_len // 16):
        rows_qb = slice(qb * 16, (qb + 1) * 16)
        for blk in kv_idx[qb, : kv_num[qb]].tolist():
            listed[rows_qb, blk * BS : (blk + 1) * BS] = True
        for blk in full_idx[qb, : full_num[qb]].tolist():
            listed[rows_qb, blk * BS : (blk + 1) * BS] = True
            real_rows = dense[rows_qb].any(1)
            assert dense[rows_qb][real_rows, blk * BS : (blk + 1) * BS].all()
    assert not (dense & ~listed).any()
    # Decode reads exactly the blocks it sees: C (position 9) all 3 of its blocks,
    # with a window of 3 (keys 7-9) only the last two.
    c_block = 2  # after A's and B's one query block each
    assert int(kv_num[c_block] + full_num[c_block]) == (3 if window is None else 2)


@pytest.mark.slow
def test_compiled_flex_kernel_matches_reference():
    """The real kernel path (torch.compile's flex template, here on the CPU), with a
    window, GQA and a prefix hit; static shapes bucketed as the runner asks."""
    compiled = torch.compile(torch.nn.attention.flex_attention.flex_attention, dynamic=False)
    for steps in (_steps(), _steps()[1:]):
        cache, q, k, v = _inputs(seed=len(steps))
        ref_k, ref_v = cache[0].clone(), cache[1].clone()
        tokens = sum(s.count for s in steps)
        q, k, v = q[:tokens], k[:tokens], v[:tokens]
        expected = _reference(steps, q, k, v, ref_k, ref_v, 6)
        flex_k = cache[0].transpose(0, 1).contiguous()
        flex_v = cache[1].transpose(0, 1).contiguous()
        meta = build_flex_metadata(steps, BS, BLOCKS * BS, 6, torch.device("cpu"), bucketed=True)
        write_kv(flex_k, flex_v, k, v, meta.slot_mapping)
        got = paged_flex_attention(q, flex_k, flex_v, meta, D**-0.5, attention=compiled)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bucketed", [False, True])
@pytest.mark.parametrize("window", [None, 3])
def test_dense_reference_matches_flex(window, bucketed):
    from tramontane.engine.gpu.paged_flex import dense_attention

    steps = _steps()
    cache, q, k, v = _inputs(seed=7)
    flex_k = cache[0].transpose(0, 1).contiguous()
    flex_v = cache[1].transpose(0, 1).contiguous()
    meta = build_flex_metadata(steps, BS, BLOCKS * BS, window, torch.device("cpu"), bucketed=bucketed)
    if bucketed:
        assert meta.padded_len == 64 and meta.logical.shape[0] == 4  # 48 rows, 4 sequences
    write_kv(flex_k, flex_v, k, v, meta.slot_mapping)
    want = paged_flex_attention(q, flex_k, flex_v, meta, D**-0.5)
    got = paged_flex_attention(q, flex_k, flex_v, meta, D**-0.5, attention=dense_attention)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
