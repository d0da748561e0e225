"""Building blocks of the decoder: RMSNorm, rotary embeddings, quantized linears."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One call instead of six kernels (decode at batch 1 is bound by per-op overhead);
        # it normalises in f32 whatever the activation dtype, as HF does.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """Inverse frequencies, with linear, Llama-3 or YaRN context scaling applied."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not scaling:
        return inv_freq.float()
    kind = scaling.get("rope_type") or scaling.get("type")
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return (inv_freq / factor).float()
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        out = torch.where(wavelen > old_ctx / low, inv_freq / factor, blended)
        out = torch.where(wavelen < old_ctx / high, inv_freq, out)
        return out.float()
    if kind == "yarn":
        return _yarn_inv_freq(inv_freq, head_dim, theta, factor, scaling).float()
    if kind in (None, "default"):
        return inv_freq.float()
    raise ValueError(f"unsupported rope scaling type {kind!r}")


def _yarn_inv_freq(inv_freq: torch.Tensor, head_dim: int, theta: float, factor: float, scaling: dict) -> torch.Tensor:
    """YaRN (arXiv:2309.00071): frequencies that turn fewer than `beta_slow` times over
    the original context are slowed by `factor` (interpolated), those that turn more
    than `beta_fast` times are kept (extrapolated), with a linear ramp between."""
    original = float(scaling["original_max_position_embeddings"])

    def dim_of(rotations: float) -> float:  # the frequency index that turns `rotations` times over `original`
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(float(scaling.get("beta_fast") or 32)), dim_of(float(scaling.get("beta_slow") or 1))
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / max(high - low, 0.001)).clamp(0, 1)
    return inv_freq / factor * ramp + inv_freq * (1 - ramp)


def rope_attention_factor(scaling: dict | None) -> float:
    """The factor YaRN applies to cos and sin (so to attention logits, squared); 1 otherwise."""
    if not scaling or (scaling.get("rope_type") or scaling.get("type")) != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor, mscale, mscale_all_dim = (float(scaling.get(k) or 0) for k in ("factor", "mscale", "mscale_all_dim"))

    def mscale_of(scale: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0

    return mscale_of(mscale) / mscale_of(mscale_all_dim) if mscale and mscale_all_dim else mscale_of(1.0)


class RotaryEmbedding(nn.Module):
    """cos/sin tables indexed by absolute position, HF rotate_half layout.

    The sin table carries rotate_half's sign (negative on the first half), so that
    apply_rope needs only a roll instead of a negate and a concatenation.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None):
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        scale = rope_attention_factor(scaling)
        self.register_buffer("cos", emb.cos() * scale, persistent=False)
        sign = torch.cat([-torch.ones(head_dim // 2), torch.ones(head_dim // 2)])
        self.register_buffer("sin", emb.sin() * sign * scale, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [B, L] -> [B, L, 1, D] so they broadcast over heads.
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with `sin` signed as RotaryEmbedding returns it."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


QUANTIZATIONS = ("none", "bf16", "int8", "int4")
INT4_GROUP = 32


@contextlib.contextmanager
def _quantized_tensors_allowed() -> Iterator[None]:
    # fbgemm's prepack and unpack take and return a torch.qint8 tensor, whose
    # creation torch deprecates (for the quantized-tensor API, not these kernels:
    # no other CPU int8 matmul comes near them, see Linear). Only that warning is hidden.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
        yield


def _pack_int8(weight: torch.Tensor, scale: torch.Tensor) -> torch.ScriptObject:
    """fbgemm's packed form of int8 rows `weight` scaled by `scale` (symmetric, per row)."""
    zeros = torch.zeros(scale.shape, dtype=torch.long)
    with _quantized_tensors_allowed():
        qweight = torch._make_per_channel_quantized_tensor(weight, scale.double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(qweight, None)


class Linear(nn.Module):
    """A bias-free linear layer whose weight may be stored quantized.

    Decode on CPU is bound by reading weights, so smaller weights mean faster tokens.
    Where the engine's own kernels run (cpu_kernels: x86-64 with AVX2), int4 and int8
    are GGUF's Q4_1 and Q8_0 blocks of 32, multiplied in integers against activations
    rounded to 8 bits per block of 32 (llama.cpp's scheme: a block's scale follows its
    own values, so one outlier costs only its block precision).
    Elsewhere int4 is PyTorch's weight-only kernel (activations stay in the model
    dtype) and int8 fbgemm's dynamic linear, which rounds each activation row to 7
    bits with one scale (so that AVX2's paired u8*s8 products cannot saturate):
    greedy decoding then leaves the f32 path within a few tokens.
    """

    def __init__(self, weight: torch.Tensor, quantization: str = "none"):
        super().__init__()
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}")
        out_features, in_features = weight.shape
        if quantization == "int4" and in_features % (INT4_GROUP * 2) != 0:
            quantization = "int8"  # the int4 kernels need whole pairs of groups
        if quantization == "int8" and cpu_kernels.available() and in_features % INT4_GROUP != 0:
            quantization = "none"
        self.quantization = quantization
        self.out_features = out_features
        # Which kernel runs: "q4_1"/"q8_0" (ours), or PyTorch's for the quantization.
        self.kernel = quantization
        weight = weight.float()
        if quantization == "none":
            self.register_buffer("weight", weight.contiguous())
        elif quantization == "bf16":
            self.register_buffer("weight", weight.to(torch.bfloat16).contiguous())
        elif cpu_kernels.available():
            self.kernel = "q4_1" if quantization == "int4" else "q8_0"
            blocks = cpu_kernels.quantize_q4_1(weight) if quantization == "int4" else cpu_kernels.quantize_q8_0(weight)
            for name, tensor in zip(("qs", "d", "m"), blocks, strict=False):
                self.register_buffer(name, tensor)
        elif quantization == "int8":
            scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
            q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
            self.packed = _pack_int8(q, scale)
        else:
            self._quantize_int4(weight)

    # The fbgemm packing is an opaque object that neither pickles nor maps from a
    # file, so a saved (prepared) model holds the int8 rows and scales, and loading
    # packs them again; the module itself keeps only the packed copy.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.kernel == "int8":
            with _quantized_tensors_allowed():
                qweight, _ = torch.ops.quantized.linear_unpack(state.pop("packed"))
            state["int8_rows"] = (qweight.int_repr(), qweight.q_per_channel_scales().float())
        return state

    def __setstate__(self, state: dict) -> None:
        rows = state.pop("int8_rows", None)
        super().__setstate__(state)
        if rows is not None:
            self.packed = _pack_int8(*rows)

    def _quantize_int4(self, weight: torch.Tensor) -> None:
        # Asymmetric 4-bit groups of 32 along the input dim: w = (q - 8) * scale + zero.
        n, k = weight.shape
        groups = weight.view(n, k // INT4_GROUP, INT4_GROUP)
        lo, hi = groups.amin(-1), groups.amax(-1)
        scale = ((hi - lo) / 15.0).clamp(min=1e-8)
        q = torch.round((groups - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
        zero = lo + 8.0 * scale
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(n, k), INT4_GROUP)
        self.register_buffer("weight", packed)
        scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_zeros", scales_zeros.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "none":
            return F.linear(x, self.weight)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.kernel == "q4_1":
            y = cpu_kernels.matmul_q4_1(x2.float(), self.qs, self.d, self.m)
        elif self.kernel == "q8_0":
            y = cpu_kernels.matmul_q8_0(x2.float(), self.qs, self.d)
        elif self.kernel == "bf16":
            y = F.linear(x2.to(torch.bfloat16), self.weight)
        elif self.kernel == "int8":
            y = self._int8_matmul(x2.float())
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16), self.weight, INT4_GROUP, self.scales_zeros
            )
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def _int8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        # fbgemm quantizes its whole input with one scale. Rows brought to a common
        # range first get one each: a stream's precision then does not hang on the
        # outliers of the others in its batch (one row needs no scaling).
        # reduce_range: 7-bit activations, see the class docstring.
        if x.shape[0] == 1:
            return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)
        row_max = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
        return torch.ops.quantized.linear_dynamic(x / row_max, self.packed, reduce_range=True) * row_max
