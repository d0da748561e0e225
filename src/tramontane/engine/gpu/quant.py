"""Linear layers of the GPU path: bf16, FP8 weights and activations, int4 weights.

- "none": the weight in the model dtype (bf16 by default on GPUs), one matmul.
- "fp8": e4m3 weights with one scale per output row, activations rounded to e4m3 per
  token at run time, multiplied by `torch._scaled_mm` (Hopper's FP8 tensor cores;
  also a reference kernel on CPUs) with both scales applied in its epilogue.
- "int4": weight-only 4-bit groups (asymmetric, PyTorch's tinygemm layout) with bf16
  activations: `_weight_int4pack_mm` on CUDA, its `_for_cpu` twin on CPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GPU_QUANTIZATIONS = ("none", "fp8", "int4")
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
# tinygemm's packing: groups of 128 along the input, 8 inner K tiles (K % 128 == 0).
INT4_GROUP = 128
INT4_INNER_K_TILES = 8


def fp8_supported(device: torch.device) -> bool:
    """FP8 tensor cores: compute capability 8.9 (Ada) and up; PyTorch's CPU kernel."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type == "cpu" and hasattr(torch, "_scaled_mm")


def quantization_fits(kind: str, weight: torch.Tensor) -> bool:
    out_features, in_features = weight.shape
    if kind == "fp8":
        return in_features % 16 == 0 and out_features % 16 == 0
    if kind == "int4":
        return in_features % INT4_GROUP == 0 and out_features % 8 == 0
    return True


class GPULinear(nn.Module):
    """y = x W^T with W [out, in] stored as `kind` asks (see the module docstring);
    a weight whose shape the kernel cannot take stays in the model dtype."""

    def __init__(self, weight: torch.Tensor, kind: str, dtype: torch.dtype):
        super().__init__()
        if kind not in GPU_QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {GPU_QUANTIZATIONS}")
        self.kind = kind if quantization_fits(kind, weight) else "none"
        self.dtype = dtype
        self.out_features = weight.shape[0]
        if self.kind == "none":
            self.register_buffer("weight", weight.to(dtype).contiguous())
        elif self.kind == "fp8":
            self._quantize_fp8(weight)
        else:
            self._quantize_int4(weight)

    def _quantize_fp8(self, weight: torch.Tensor) -> None:
        w = weight.float()
        scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)
        self.register_buffer("weight", (w / scale[:, None]).to(FP8).contiguous())
        self.register_buffer("weight_scale", scale[None, :].contiguous())  # [1, out]

    def _quantize_int4(self, weight: torch.Tensor) -> None:
        # w = (q - 8) * scale + zero with q in 0..15: tinygemm's asymmetric form.
        n, k = weight.shape
        groups = weight.float().view(n, k // INT4_GROUP, INT4_GROUP)
        lo, hi = groups.amin(-1), groups.amax(-1)
        scale = ((hi - lo) / 15.0).clamp(min=1e-6)
        q = torch.round((groups - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).view(n, k)
        zero = lo + 8.0 * scale
        if weight.device.type == "cuda":
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, INT4_INNER_K_TILES)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES)
        self.register_buffer("weight", packed)
        scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [k/g, n, 2]
        self.register_buffer("scales_zeros", scales_zeros.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return F.linear(x.to(self.dtype), self.weight)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.kind == "fp8":
            y = self._fp8_matmul(x2)
        elif self.weight.device.type == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(x2.to(torch.bfloat16), self.weight, INT4_GROUP, self.scales_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16), self.weight, INT4_GROUP, self.scales_zeros
            )
        return y.to(self.dtype).view(*shape[:-1], self.out_features)

    def _fp8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if x.device.type == "cuda" and rows % 16:
            # cuBLASLt's FP8 matmul wants every dimension a multiple of 16.
            x = F.pad(x, (0, 0, 0, 16 - rows % 16))
        x = x.float()
        x_scale = (x.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)  # [M, 1]
        x8 = (x / x_scale).to(FP8)
        y = torch._scaled_mm(
            x8, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale, out_dtype=torch.bfloat16
        )
        return y[:rows]
