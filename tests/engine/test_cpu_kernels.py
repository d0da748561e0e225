"""The engine's own CPU kernels (engine/kernels/*.c): the quantized matmuls and
the decode step's attention against PyTorch references, on every instruction set this CPU
has, plus the properties the engine relies on (GGUF's blocks kept exactly, rows
that do not depend on their batch, callers on several threads)."""

from __future__ import annotations

import dataclasses
import threading
import time

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tramontane.engine import EngineConfig, LLMEngine, cpu_kernels
from tramontane.engine.attention import build_metadata
from tramontane.engine.defaults import default_chat_model_path
from tramontane.engine.layers import RotaryEmbedding, apply_rope

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no CPU kernels here (not x86-64 with AVX2)")

ISAS = [cpu_kernels.ISA.AVX2, cpu_kernels.ISA.AVX512_VNNI]


@pytest.fixture(params=ISAS, ids=lambda isa: isa.name)
def isa(request):
    if cpu_kernels.set_isa(request.param) != request.param:
        cpu_kernels.set_isa(cpu_kernels.ISA.AVX512_VNNI)
        pytest.skip(f"this CPU has no {request.param.name}")
    yield request.param
    cpu_kernels.set_isa(cpu_kernels.ISA.AVX512_VNNI)  # back to the best the CPU has


def _blockwise_int8(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels see it: rounded to 8 bits per block of 32 with its own scale."""
    rows, k = x.shape
    blocks = x.view(rows, k // 32, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    return (torch.round(blocks * inv) * scale).view(rows, k)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


# M covers single rows (decode), the edges of the tiles and of a 64-row chunk.
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 16, 63, 65, 130])
@pytest.mark.parametrize(("n", "k"), [(960, 576), (576, 1536), (37, 64)])
def test_matmuls_compute_the_block_arithmetic(isa, rows, n, k):
    gen = torch.Generator().manual_seed(rows * n + k)
    weight = torch.randn(n, k, generator=gen) * 0.05
    x = torch.randn(rows, k, generator=gen)
    x_int8 = _blockwise_int8(x).double()
    q4 = cpu_kernels.quantize_q4_1(weight)
    q8 = cpu_kernels.quantize_q8_0(weight)
    want4 = x_int8 @ cpu_kernels.dequantize_q4_1(*q4).double().T
    want8 = x_int8 @ cpu_kernels.dequantize_q8_0(*q8).double().T
    # Integer sums are exact; what is left is float32 rounding of the scaled sums.
    assert _relative_error(cpu_kernels.matmul_q4_1(x, *q4), want4) < 1e-5
    assert _relative_error(cpu_kernels.matmul_q8_0(x, *q8), want8) < 1e-5


@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("k", [32, 96])
def test_q8_0_takes_an_odd_number_of_blocks(isa, rows, k):
    # Q8_0 needs whole blocks only (Q4_1 whole pairs): the last block is alone, or the only one.
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(37, k, generator=gen) * 0.05
    x = torch.randn(rows, k, generator=gen)
    q8 = cpu_kernels.quantize_q8_0(weight)
    want = _blockwise_int8(x).double() @ cpu_kernels.dequantize_q8_0(*q8).double().T
    assert _relative_error(cpu_kernels.matmul_q8_0(x, *q8), want) < 1e-5


def test_matmuls_take_no_rows(isa):
    # A step in which no sequence needs logits projects zero rows; the kernel must
    # answer with an empty result, not a division by zero that kills the process.
    weight = torch.randn(37, 64) * 0.05
    x = torch.empty(0, 64)
    assert cpu_kernels.matmul_q4_1(x, *cpu_kernels.quantize_q4_1(weight)).shape == (0, 37)
    assert cpu_kernels.matmul_q8_0(x, *cpu_kernels.quantize_q8_0(weight)).shape == (0, 37)


def test_quantized_matmuls_track_float32():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(576, 1536, generator=gen) * 0.05
    x = torch.randn(8, 1536, generator=gen)
    want = F.linear(x, weight).double()
    # Block scales keep the error to the levels' own: 4-bit weights ~9%, 8-bit ~1%.
    assert _relative_error(cpu_kernels.matmul_q4_1(x, *cpu_kernels.quantize_q4_1(weight)), want) < 0.15
    assert _relative_error(cpu_kernels.matmul_q8_0(x, *cpu_kernels.quantize_q8_0(weight)), want) < 0.02


def test_a_row_does_not_depend_on_its_batch(isa):
    # Each row is rounded with its own block scales and summed in one order, so a
    # stream's tokens are the same whoever shares its batch (one outlier row included).
    gen = torch.Generator().manual_seed(1)
    q4 = cpu_kernels.quantize_q4_1(torch.randn(960, 576, generator=gen) * 0.05)
    batch = torch.randn(16, 576, generator=gen)
    batch[3] *= 1000
    together = cpu_kernels.matmul_q4_1(batch, *q4)
    for row in (0, 3, 15):
        assert torch.equal(cpu_kernels.matmul_q4_1(batch[row : row + 1], *q4)[0], together[row])


def _gguf_tensor(name: str):
    reader = gguf.GGUFReader(default_chat_model_path())
    tensor = next(t for t in reader.tensors if t.name == name)
    rows = int(tensor.shape[1])
    raw = np.asarray(tensor.data).reshape(rows, -1)
    values = gguf.quants.dequantize(raw, tensor.tensor_type).reshape(rows, -1)
    return raw, torch.from_numpy(np.ascontiguousarray(values)).float()


def test_q4_1_keeps_the_gguf_blocks_exactly():
    raw, values = _gguf_tensor("blk.0.attn_q.weight")  # Q4_1 in the default model
    blocks = torch.from_numpy(raw.copy()).view(raw.shape[0], -1, 20)  # f16 d, f16 m, 16 bytes
    qs, d, m = cpu_kernels.quantize_q4_1(values)
    assert torch.equal(d.view(torch.int16), blocks[..., 0:2].contiguous().view(torch.int16).squeeze(-1))
    assert torch.equal(m.view(torch.int16), blocks[..., 2:4].contiguous().view(torch.int16).squeeze(-1))
    gguf_levels = torch.cat([blocks[..., 4:] & 0x0F, blocks[..., 4:] >> 4], dim=-1)  # GGUF: i and i + 16
    ours = torch.round((cpu_kernels.dequantize_q4_1(qs, d, m).view_as(gguf_levels.float()) - m.float()[..., None])
                       / d.float()[..., None])
    assert torch.equal(ours.to(torch.uint8), gguf_levels)


def test_q8_0_keeps_the_gguf_blocks_exactly():
    raw, values = _gguf_tensor("token_embd.weight")  # the tied head, Q8_0
    blocks = torch.from_numpy(raw.copy()).view(raw.shape[0], -1, 34)  # f16 d, 32 int8
    qs, d = cpu_kernels.quantize_q8_0(values)
    assert torch.equal(d.view(torch.int16), blocks[..., 0:2].contiguous().view(torch.int16).squeeze(-1))
    assert torch.equal(qs.view(blocks.shape[0], -1, 32), blocks[..., 2:].contiguous().view(torch.int8))


HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M's attention


def _random_cache(gen: torch.Generator, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (slots, KV_HEADS, HEAD_DIM)
    return torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)


def _sdpa(q: torch.Tensor, k_cache, v_cache, slots: torch.Tensor, scale: float) -> torch.Tensor:
    """One token's attention [H, D] to the keys in `slots`, by PyTorch, flattened."""
    keys, values = k_cache[slots].transpose(0, 1), v_cache[slots].transpose(0, 1)  # [KVH, n, D]
    return F.scaled_dot_product_attention(q[:, None], keys, values, scale=scale, enable_gqa=True)[:, 0].reshape(-1)


def _reference_decode(qkv, heads, cos, sin, k_cache, v_cache, new_slots, key_slots, lens, window, scale):
    """The PyTorch path: rotate, write the cache, attend with sdpa per sequence."""
    kv_heads, head_dim = k_cache.shape[1:]
    q, k, v = qkv.view(len(lens), heads + 2 * kv_heads, head_dim).split([heads, kv_heads, kv_heads], dim=1)
    q, k = apply_rope(q, cos[:, None], sin[:, None]), apply_rope(k, cos[:, None], sin[:, None])
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    k_cache[new_slots], v_cache[new_slots] = k, v
    out = []
    for b, length in enumerate(lens.tolist()):
        first = max(0, length - window) if window else 0
        out.append(_sdpa(q[b], k_cache, v_cache, key_slots[b, first:length], scale))
    return torch.stack(out), k_cache, v_cache


@pytest.mark.parametrize("window", [None, 5])
def test_decode_attention_matches_the_pytorch_path(window):
    gen = torch.Generator().manual_seed(2)
    heads, kv_heads, head_dim, slots = HEADS, KV_HEADS, HEAD_DIM, 200
    k_cache, v_cache = _random_cache(gen, slots)
    lens = torch.tensor([1, 17, 40])
    # Each sequence's keys scattered over the pool, rows padded past their length;
    # the new token's key goes to the last slot of its context.
    key_slots = torch.stack([torch.randperm(slots, generator=gen)[:40] for _ in lens])
    new_slots = key_slots[torch.arange(len(lens)), lens - 1]
    rope = RotaryEmbedding(head_dim, 128, 10000.0, None)
    cos, sin = rope.cos[lens - 1], rope.sin[lens - 1]
    qkv = torch.randn(len(lens), (heads + 2 * kv_heads) * head_dim, generator=gen)
    want, want_k, want_v = _reference_decode(
        qkv, heads, cos, sin, k_cache, v_cache, new_slots, key_slots, lens, window, 0.125
    )
    step = cpu_kernels.DecodeStep(heads, cos, sin, new_slots, key_slots, lens, window, 0.125)
    got = cpu_kernels.attention_decode(qkv, step, k_cache, v_cache)
    assert torch.allclose(k_cache, want_k, atol=1e-6) and torch.equal(v_cache, want_v)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
def test_prefill_attention_matches_sdpa(window):
    # Two sequences' prompts, each token attending causally to its keys in the cache.
    gen = torch.Generator().manual_seed(5)
    slots = 100
    k_cache, v_cache = _random_cache(gen, slots)
    key_slots = torch.stack([torch.randperm(slots, generator=gen)[:12] for _ in range(2)])
    # Sequence 0 computes positions 4..11 (after a cached prefix), sequence 1 positions 0..5.
    token_seqs = torch.tensor([0] * 8 + [1] * 6)
    token_lens = torch.cat([torch.arange(5, 13), torch.arange(1, 7)])
    q = torch.randn(len(token_seqs), HEADS, HEAD_DIM, generator=gen)
    got = cpu_kernels.attention_prefill(q, k_cache, v_cache, key_slots, token_seqs, token_lens, window, 0.125)
    for t, (seq, length) in enumerate(zip(token_seqs.tolist(), token_lens.tolist(), strict=True)):
        first = max(0, length - window) if window else 0
        want = _sdpa(q[t], k_cache, v_cache, key_slots[seq, first:length], 0.125)
        assert torch.allclose(got[t], want, atol=1e-5)
    # Each token on its own: the same result alone as among the others.
    alone = cpu_kernels.attention_prefill(q[3:4], k_cache, v_cache, key_slots, token_seqs[3:4], token_lens[3:4],
                                          window, 0.125)
    assert torch.equal(alone[0], got[3])


def test_callers_on_several_threads_share_the_pool():
    # Several engines in one process (one per model) call the kernels at once.
    gen = torch.Generator().manual_seed(3)
    q4 = cpu_kernels.quantize_q4_1(torch.randn(576, 576, generator=gen) * 0.05)
    inputs = [torch.randn(4, 576, generator=gen) for _ in range(4)]
    want = [cpu_kernels.matmul_q4_1(x, *q4) for x in inputs]
    failures = []

    def hammer(i: int) -> None:
        for _ in range(200):
            if not torch.equal(cpu_kernels.matmul_q4_1(inputs[i], *q4), want[i]):
                failures.append(i)
                return

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures and not any(t.is_alive() for t in threads)


def test_fused_decode_layer_matches_the_operator_path(smollm_checkpoint):
    # A decode step of three sequences through each layer: the one-call kernel
    # (dense_layer_decode) against the same layer run operator by operator.
    engine = LLMEngine(smollm_checkpoint, EngineConfig(kv_cache_memory_gb=0.05, quantization="int4"))
    model = engine.runner.model
    prompts = [engine.tokenizer.encode(text) for text in ("The sea is", "def f(x):", "Bonjour, je")]
    tables = [[0, 1], [2, 3], [4, 5]]
    lengths = [len(p) for p in prompts]
    for ids, table in zip(prompts, tables, strict=True):
        meta = build_metadata([list(range(len(ids)))], [table], 16, None, torch.device("cpu"))
        model(torch.tensor([ids]), torch.arange(len(ids))[None], meta, torch.tensor([len(ids) - 1]))
    positions = torch.tensor([[n] for n in lengths])
    meta = build_metadata([[n] for n in lengths], tables, 16, None, torch.device("cpu"))
    cos, sin = model.rotary(positions)
    attn = model.layers[0].self_attn
    step = cpu_kernels.DecodeStep(
        attn.n_heads, cos.view(3, -1), sin.view(3, -1), meta.slot_mapping, meta.key_slots, meta.context_lens,
        None, attn.scale,
    )
    meta = dataclasses.replace(meta, decode=step)
    x = torch.randn(3, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    for layer in model.layers[:4]:
        assert layer.fused_decode_spec() is not None
        fused = x.clone()
        assert layer(fused, cos, sin, meta, None) is fused  # in place
        h = x + layer.self_attn(layer.input_layernorm(x), cos, sin, meta, None)
        by_operators = h + layer.mlp(layer.post_attention_layernorm(h))
        # The same arithmetic but for the RMSNorm's last bits, which can move an
        # activation by one of its 8-bit levels now and then.
        error = (fused - by_operators).abs()
        assert error.max() < 1e-3 * by_operators.abs().max() and error.mean() < 1e-5 * by_operators.abs().max()
        x = fused


def test_workers_that_fell_asleep_always_wake_for_the_next_job():
    # Each pause outlasts the workers' spin, so every job wakes sleeping workers
    # (a decode step after a quiet moment). With glibc 2.36's condition variables
    # a wake-up was once lost in a long run and the caller waited for good.
    gen = torch.Generator().manual_seed(5)
    q4 = cpu_kernels.quantize_q4_1(torch.randn(576, 576, generator=gen) * 0.05)
    x = torch.randn(1, 576, generator=gen)
    want = cpu_kernels.matmul_q4_1(x, *q4)
    results = []

    def wake_repeatedly() -> None:
        for _ in range(3000):
            time.sleep(0.0003)
            results.append(torch.equal(cpu_kernels.matmul_q4_1(x, *q4), want))

    thread = threading.Thread(target=wake_repeatedly, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), f"a job never finished after {len(results)} jobs"
    assert all(results) and len(results) == 3000
