"""The engine's own CPU matmul kernels (C, in kernels/): 4-bit and 8-bit weights
in GGUF's block formats against activations rounded to 8 bits per block of 32.

PyTorch's CPU int4 kernel widens the weights to float and multiplies in float,
so decode is bound by arithmetic; these sum integer products (AVX2, or AVX-512
VNNI where the CPU has it) as llama.cpp does, and run on a thread pool of their
own that never waits for a descheduled thread (see kernels/pool.h).

`available()` is False where the extension was not built or the CPU lacks AVX2;
the engine then uses PyTorch's kernels.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

import torch

try:
    from . import _kernels
except ImportError:  # built without a C compiler, or not x86-64
    _kernels = None

BLOCK = 32
_start_lock = threading.Lock()
_started = False


class ISA(enum.IntEnum):
    NONE = 0
    AVX2 = 1
    AVX512_VNNI = 2


_AVAILABLE = _kernels is not None and _kernels.detected_isa() > ISA.NONE


def available() -> bool:
    return _AVAILABLE


def isa() -> ISA:
    return ISA(_kernels.isa()) if _kernels is not None else ISA.NONE


def set_isa(wanted: ISA) -> ISA:
    """Run the kernels with at most `wanted` (tests compare the code paths)."""
    return ISA(_kernels.set_isa(int(wanted)))


def _ensure_started() -> None:
    global _started
    if _started:
        return
    with _start_lock:
        if not _started:
            # As many threads as torch uses (OMP_NUM_THREADS / torch.set_num_threads).
            _kernels.start(torch.get_num_threads())
            _started = True


def quantize_q4_1(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 blocks of `weight` [N, K]: w = d * q + m with q in 0..15 per block of 32
    inputs. Returns qs uint8 [N, K / 2] (blocks paired in bytes: low nibble the pair's
    first block, high nibble its second) and d, m float16 [N, K / 32]."""
    n, k = weight.shape
    if k % (2 * BLOCK):
        raise ValueError(f"Q4_1 needs the input size to be a multiple of {2 * BLOCK}, not {k}")
    blocks = weight.float().view(n, k // BLOCK, BLOCK)
    lo, hi = blocks.amin(-1), blocks.amax(-1)
    # Scales are rounded to half first and the levels computed from them, so that a
    # GGUF's own Q4_1 blocks (dequantized to float) come back level for level.
    d = ((hi - lo) / 15).half()
    m = lo.half()
    inv = torch.where(d > 0, 1 / d.float(), torch.zeros_like(lo))
    q = torch.round((blocks - m.float()[..., None]) * inv[..., None]).clamp(0, 15).to(torch.uint8)
    pairs = q.view(n, k // (2 * BLOCK), 2, BLOCK)
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, k // 2)
    return qs.contiguous(), d.contiguous(), m.contiguous()


def dequantize_q4_1(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    n, nb = d.shape
    pairs = qs.view(n, nb // 2, 1, BLOCK)
    q = torch.cat([pairs & 0x0F, pairs >> 4], dim=2).view(n, nb, BLOCK).float()
    return (q * d.float()[..., None] + m.float()[..., None]).view(n, nb * BLOCK)


def quantize_q8_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 blocks of `weight` [N, K]: w = d * q with q in -127..127 per block of 32
    inputs. Returns qs int8 [N, K] and d float16 [N, K / 32]."""
    n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"Q8_0 needs the input size to be a multiple of {BLOCK}, not {k}")
    blocks = weight.float().view(n, k // BLOCK, BLOCK)
    d = (blocks.abs().amax(-1) / 127).half()
    inv = torch.where(d > 0, 1 / d.float(), torch.zeros_like(d, dtype=torch.float32))
    q = torch.round(blocks * inv[..., None]).clamp(-127, 127).to(torch.int8)
    return q.view(n, k).contiguous(), d.contiguous()


def dequantize_q8_0(qs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    n, nb = d.shape
    return (qs.view(n, nb, BLOCK).float() * d.float()[..., None]).view(n, nb * BLOCK)


def _prepare(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    _ensure_started()
    if x.dtype != torch.float32 or x.dim() != 2:
        raise TypeError("the CPU kernels take 2-D float32 activations")
    return x.contiguous(), torch.empty(x.shape[0], n, dtype=torch.float32)


def matmul_q4_1(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x [M, K] float32 @ w^T for w in Q4_1 (see quantize_q4_1) -> [M, N] float32."""
    x, y = _prepare(x, qs.shape[0])
    if x.shape[0] == 0:  # the kernel splits its work by rows: none would divide by zero
        return y
    m_ptr = m.data_ptr()
    _kernels.matmul(x.data_ptr(), x.shape[0], x.shape[1], qs.data_ptr(), d.data_ptr(), m_ptr, qs.shape[0], y.data_ptr())
    return y


def matmul_q8_0(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x [M, K] float32 @ w^T for w in Q8_0 (see quantize_q8_0) -> [M, N] float32."""
    x, y = _prepare(x, qs.shape[0])
    if x.shape[0] == 0:  # e.g. a step in which no sequence needs its logits
        return y
    _kernels.matmul(x.data_ptr(), x.shape[0], x.shape[1], qs.data_ptr(), d.data_ptr(), 0, qs.shape[0], y.data_ptr())
    return y


@dataclass
class DecodeStep:
    """What a decode step's attention needs besides its queries, keys and values,
    shared by the layers of a step (each with its own cache)."""

    heads: int
    cos: torch.Tensor  # [B, D] at each token's position, rotate-half layout
    sin: torch.Tensor  # [B, D], its first half negated (see layers.RotaryEmbedding)
    new_slots: torch.Tensor  # [B] int64: where each token's key and value go
    key_slots: torch.Tensor  # [B, Lk] int64, each row's first context_lens[b] used
    context_lens: torch.Tensor  # [B] int64, the new token included
    window: int | None  # attend to the last `window` keys only (sliding window)
    scale: float

    def __post_init__(self) -> None:
        self.cos, self.sin = self.cos.contiguous(), self.sin.contiguous()

    def arguments(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple:
        kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2]
        return (
            self.heads, kv_heads, head_dim, self.cos.data_ptr(), self.sin.data_ptr(), k_cache.data_ptr(),
            v_cache.data_ptr(), self.new_slots.data_ptr(), self.key_slots.data_ptr(), self.context_lens.data_ptr(),
            self.key_slots.shape[1], self.window or 0, self.scale,
        )


def attention_decode(
    qkv: torch.Tensor, step: DecodeStep, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> torch.Tensor:
    """A decode step's attention, float32: rotates each new token's query and key
    (qkv [B, (H + 2 * KVH) * D]: queries, keys, values), stores its key and value in
    the cache and attends to its context. Returns [B, H * D]."""
    _ensure_started()
    qkv = qkv.contiguous()
    out = torch.empty(qkv.shape[0], step.heads * k_cache.shape[2], dtype=torch.float32)
    _kernels.attention_decode(qkv.data_ptr(), qkv.shape[0], out.data_ptr(), *step.arguments(k_cache, v_cache))
    return out


def dense_layer_spec(
    hidden: int, intermediate: int, eps: float, input_norm: torch.Tensor, post_attention_norm: torch.Tensor,
    projections: list[tuple[torch.Tensor, ...]],
) -> tuple:
    """The addresses and sizes dense_layer_decode reads a layer's weights from:
    float32 norm weights, and (qs, d[, m]) of qkv, o, gate_up and down in that order.
    The tensors must outlive every call made with it."""
    spec = [hidden, intermediate, input_norm.data_ptr(), post_attention_norm.data_ptr()]
    for blocks in projections:
        qs, d = blocks[0], blocks[1]
        m = blocks[2].data_ptr() if len(blocks) == 3 else 0
        k = qs.shape[1] * (2 if len(blocks) == 3 else 1)
        spec += [qs.data_ptr(), d.data_ptr(), m, qs.shape[0], k]
    return (*spec, eps)


def dense_layer_decode(
    spec: tuple, x: torch.Tensor, step: DecodeStep, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> None:
    """x [B, hidden] float32, contiguous, += the layer's attention and MLP, in place
    (one token per sequence)."""
    _ensure_started()
    _kernels.dense_layer_decode(spec, x.data_ptr(), x.shape[0], *step.arguments(k_cache, v_cache))


def attention_prefill(
    q: torch.Tensor,  # [T, H, D], rotated
    k_cache: torch.Tensor,  # [slots, KVH, D], the tokens' own keys already written
    v_cache: torch.Tensor,
    key_slots: torch.Tensor,  # [B, Lk] int64: each sequence's keys in position order
    token_seqs: torch.Tensor,  # [T] int64: each token's row of key_slots
    token_lens: torch.Tensor,  # [T] int64: keys each token sees (its position + 1)
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """Causal attention of T query tokens, float32, each computed on its own: a
    token's output does not depend on the others in the call. Returns [T, H * D]."""
    _ensure_started()
    q = q.contiguous()
    tokens, heads, head_dim = q.shape
    out = torch.empty(tokens, heads * head_dim, dtype=torch.float32)
    _kernels.attention_prefill(
        tokens, heads, k_cache.shape[1], head_dim, q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
        key_slots.data_ptr(), token_seqs.data_ptr(), token_lens.data_ptr(), key_slots.shape[1], window or 0,
        scale, out.data_ptr(),
    )
    return out
