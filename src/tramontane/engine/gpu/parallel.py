"""Tensor parallelism across the GPUs of one node (Megatron's split).

Every rank holds a slice of each layer: the Q/K/V and gate/up projections split by
output (whole attention heads, slices of the MLP's hidden width), the output and down
projections split by input, so a layer needs one all-reduce after attention and one
after the MLP. The vocabulary projection is split by rows and its logits gathered.
NCCL carries the collectives between GPUs; gloo does the same on CPUs (the tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ModelLoadError


@dataclass(frozen=True)
class Parallel:
    """This process's place in its tensor-parallel group."""

    rank: int = 0
    world: int = 1
    group: dist.ProcessGroup | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's contiguous slice of `tensor` along `dim`."""
        if not self.enabled:
            return tensor
        size = tensor.shape[dim]
        if size % self.world:
            raise ModelLoadError(f"dimension of size {size} does not split across {self.world} ranks")
        part = size // self.world
        return tensor.narrow(dim, self.rank * part, part).contiguous()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def all_gather_last(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' slices of the last dimension, concatenated in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


def init_tensor_parallel(device: torch.device) -> Parallel:
    """Joins the group that torchrun (or any launcher setting RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT) describes: NCCL on CUDA, gloo on the CPU. One
    process per GPU; with no launcher, a group of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Parallel()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=world)
    return Parallel(rank=dist.get_rank(), world=dist.get_world_size(), group=dist.group.WORLD)


def check_divisible(heads: int, kv_heads: int, intermediate: int, vocab: int, world: int) -> None:
    """A model splits over `world` ranks only along whole heads and even slices."""
    for name, size in (("attention heads", heads), ("key/value heads", kv_heads),
                       ("MLP width", intermediate), ("vocabulary", vocab)):
        if size % world:
            raise ModelLoadError(f"{name} ({size}) do not split across {world} tensor-parallel ranks")
