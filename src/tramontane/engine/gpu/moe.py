"""Mixture of experts with one grouped matmul per projection.

The step's (token, expert) pairs are sorted by expert, so each expert's tokens are
one contiguous run of rows; `torch._grouped_mm` then multiplies every run by its
expert's weights in one kernel, given only the runs' end offsets, which stay on the
device (no per-expert launches, no host synchronisation: a CUDA graph can hold it).
Where this PyTorch or device has no grouped kernel for the dtype, the same sorted
rows go through one matmul per expert (that path reads the offsets on the host).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .parallel import Parallel


@functools.cache
def grouped_mm_available(device_type: str, index: int | None, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs here, probed once on a tiny problem (its
    support depends on the PyTorch version, the GPU generation and the dtype)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    try:
        a = torch.zeros(16, 16, dtype=dtype, device=device)
        b = torch.zeros(2, 16, 16, dtype=dtype, device=device)
        torch._grouped_mm(a, b.transpose(1, 2), offs=torch.tensor([8, 16], dtype=torch.int32, device=device))
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


def grouped_matmul(x: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor, grouped: bool) -> torch.Tensor:
    """Rows offsets[g-1]:offsets[g] of x [M, K] times weights[g]^T ([G, N, K]) -> [M, N]."""
    if grouped:
        return torch._grouped_mm(x, weights.transpose(1, 2), offs=offsets)
    out = x.new_empty(x.shape[0], weights.shape[1])
    start = 0
    for g, end in enumerate(offsets.tolist()):
        if end > start:
            torch.matmul(x[start:end], weights[g].t(), out=out[start:end])
        start = end
    return out


class GroupedMoE(nn.Module):
    """Mixtral's sparse MoE: top-k experts per token by the router's softmax,
    their outputs mixed by the renormalised probabilities. `w13` holds each expert's
    gate and up rows [E, 2 * I, H], `w2` its down projection [E, H, I] (under tensor
    parallelism, each rank's slice of I, summed across ranks afterwards)."""

    def __init__(self, router: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int,
                 dtype: torch.dtype, parallel: Parallel | None = None):
        super().__init__()
        self.top_k = top_k
        self.num_experts = w13.shape[0]
        self.ffn = w2.shape[2]  # I (this rank's slice)
        self.parallel = parallel or Parallel()
        self.register_buffer("router", router.to(dtype).contiguous())
        self.register_buffer("w13", w13.to(dtype).contiguous())
        self.register_buffer("w2", w2.to(dtype).contiguous())
        self.grouped = grouped_mm_available(w13.device.type, w13.device.index, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H]
        probs = F.softmax(F.linear(x, self.router).float(), dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        flat_expert = chosen.flatten()
        order = flat_expert.argsort(stable=True)
        token_of_pair = order // self.top_k
        # Not bincount: on CUDA it reads the largest id on the host (a sync, and no graph).
        counts = torch.zeros(self.num_experts, dtype=torch.int32, device=x.device)
        counts.index_add_(0, flat_expert, torch.ones_like(flat_expert, dtype=torch.int32))
        offsets = counts.cumsum(0, dtype=torch.int32)
        rows = x.index_select(0, token_of_pair)  # [T * k, H], expert after expert
        gate_up = grouped_matmul(rows, self.w13, offsets, self.grouped)
        gate, up = gate_up.split(self.ffn, dim=-1)
        y = grouped_matmul(F.silu(gate) * up, self.w2, offsets, self.grouped)
        y = y * weights.flatten().index_select(0, order)[:, None]
        out = torch.zeros_like(x).index_add_(0, token_of_pair, y)
        return self.parallel.all_reduce(out)
