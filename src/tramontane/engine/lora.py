"""Multi-LoRA: many adapters on one base model, batched together in one step.

Adapters are read from PEFT's on-disk layout (adapter_config.json and
adapter_model.safetensors). The resident ones live in per-projection slot tensors,
as in S-LoRA and Punica: every sequence of a batch names a slot, and each
LoRA-targeted projection adds `scale * (x @ A[slot]^T) @ B[slot]^T` for the whole
batch with batched matmuls, rows grouped by slot so that an adapter shared by many
sequences is read once (and in place, not copied, when the batch's slots lie close
together). Our projections are fused (qkv, gate_up), so the A of every part is
stacked along the rank and each part's B writes its output slice.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open

from .config import ModelConfig
from .errors import InvalidRequestError, ModelLoadError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Our fused projections and the HF projections they stand for, in output order.
FUSED: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}
_MLP_TARGETS = {"gate_proj", "up_proj", "down_proj"}
# PEFT saves `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`;
# in-memory state dicts add the adapter's name (`lora_A.default.weight`).
_KEY = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight"
)
_ids = itertools.count(1)


def target_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each HF projection of the base model."""
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    hidden, ffn = cfg.hidden_size, cfg.intermediate_size
    return {
        "q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
        "gate_proj": (hidden, ffn), "up_proj": (hidden, ffn), "down_proj": (ffn, hidden),
    }


@dataclass(eq=False)
class LoRAAdapter:
    name: str
    path: str
    rank: int
    # (layer, HF projection) -> (A [r, in], B [out, r] with the scale folded in), float32.
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    # Unique per load: a re-added name gets a fresh id, so no stale prefix-cache hit.
    id: int = field(default_factory=lambda: next(_ids))


def load_lora(name: str, path: str, cfg: ModelConfig, max_rank: int) -> LoRAAdapter:
    """Reads a PEFT LoRA folder; ModelLoadError if it cannot apply to this base model."""
    config = _read_config(path)
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
        raise ModelLoadError(f"{path}: adapter_config.json needs a positive integer r and a numeric lora_alpha")
    if rank > max_rank:
        raise ModelLoadError(f"{path}: LoRA rank {rank} exceeds this engine's max_lora_rank {max_rank}")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    shapes = target_shapes(cfg)
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(path):
        match = _KEY.fullmatch(key)
        if match is None:
            raise ModelLoadError(f"{path}: unexpected tensor {key!r} (only LoRA A/B of {', '.join(TARGETS)})")
        layer, target, which = int(match[1]), match[2], match[3]
        if target not in shapes or layer >= cfg.num_hidden_layers:
            raise ModelLoadError(f"{path}: {key!r} has no counterpart in the base model")
        if cfg.is_moe and target in _MLP_TARGETS:
            raise ModelLoadError(f"{path}: LoRA on a mixture-of-experts MLP is not supported")
        parts.setdefault((layer, target), {})[which] = tensor.float()
    weights = {}
    for (layer, target), ab in parts.items():
        a, b = ab.get("A"), ab.get("B")
        fan_in, fan_out = shapes[target]
        if a is None or b is None:
            raise ModelLoadError(f"{path}: layer {layer} {target} lacks its lora_A or lora_B weight")
        if a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
            raise ModelLoadError(
                f"{path}: layer {layer} {target} has A {tuple(a.shape)} and B {tuple(b.shape)}; this base model "
                f"needs A ({rank}, {fan_in}) and B ({fan_out}, {rank}): the adapter was trained for another model"
            )
        weights[layer, target] = (a.contiguous(), (b * scale).contiguous())
    if not weights:
        raise ModelLoadError(f"{path}: the adapter holds no LoRA weights")
    return LoRAAdapter(name, path, rank, weights)


def _read_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a PEFT adapter folder: {e}") from e
    if config.get("peft_type", "LORA") != "LORA":
        raise ModelLoadError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    # Variants that change the arithmetic or add weights beyond A and B.
    if config.get("use_dora") or config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise ModelLoadError(f"{path}: DoRA, LoRA biases and modules_to_save are not supported")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ModelLoadError(f"{path}: per-module rank_pattern/alpha_pattern are not supported")
    return config


def _read_tensors(path: str):
    file = os.path.join(path, "adapter_model.safetensors")
    try:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    except (OSError, SafetensorError) as e:
        raise ModelLoadError(f"{path}: cannot read adapter_model.safetensors: {e}") from e


@dataclass
class LoRABatch:
    """Which slot each row of a batch uses, grouped by slot (computed once per step).

    Rows of one slot are gathered into a group, groups padded to the largest with
    row 0 (whose padded results are never read back), so every projection runs one
    bmm for the shrink and one per fused part for the expand, whatever the mix.

    The groups follow slot order. When the batch's slots are packed closely enough,
    the groups are every slot from the lowest to the highest used, and projections
    read the weights through a view: one adapter's weights are read once per step
    whatever its number of rows, and never copied. A slot in that range that no row
    uses costs a read of its weights, which is cheaper than gathering (a copy: a
    read, a write and a second read) while at most half the range is unused.
    """

    first_slot: int  # the slot of group 0, when the groups are a range of slots
    slots: torch.Tensor | None  # otherwise the slot of each group, to gather
    num_groups: int
    group_size: int
    rank: int  # the largest rank among the batch's adapters
    gather_rows: torch.Tensor  # [num_groups * group_size] batch rows in group order, padded with 0
    rows: torch.Tensor  # rows that carry an adapter
    positions: torch.Tensor  # their index in group order
    # Group order is the batch order, nothing padded or left out: the usual decode
    # batch on one adapter or on one per row, which then needs no gather or scatter.
    dense: bool

    @classmethod
    def build(cls, row_adapters: list[tuple[int, int] | None], device: torch.device) -> LoRABatch | None:
        """From each row's (slot, rank), None for a row without an adapter."""
        by_slot: dict[int, list[int]] = {}
        rank = 0
        for row, adapter in enumerate(row_adapters):
            if adapter is not None:
                by_slot.setdefault(adapter[0], []).append(row)
                rank = max(rank, adapter[1])
        if not by_slot:
            return None
        used = sorted(by_slot)
        packed = used[-1] + 1 - used[0] <= 2 * len(used)
        group_slots = range(used[0], used[-1] + 1) if packed else used
        size = max(len(members) for members in by_slot.values())
        gather: list[int] = []
        rows: list[int] = []
        positions: list[int] = []
        for g, slot in enumerate(group_slots):
            members = by_slot.get(slot, [])
            rows += members
            positions += range(g * size, g * size + len(members))
            gather += members + [0] * (size - len(members))

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(
            first_slot=used[0],
            slots=None if packed else tensor(used),
            num_groups=len(group_slots),
            group_size=size,
            rank=rank,
            gather_rows=tensor(gather),
            rows=tensor(rows),
            positions=tensor(positions),
            dense=gather == list(range(len(row_adapters))),
        )

    def select(self, weights: torch.Tensor) -> torch.Tensor:
        """The groups' slots of a [slots, ...] tensor: a view when they are a range."""
        if self.slots is None:
            return weights[self.first_slot : self.first_slot + self.num_groups]
        return weights.index_select(0, self.slots)


class LoRAStack:
    """The slots' LoRA weights for one fused projection: the parts' A rank-major,
    [slots, rank, parts, in], so that the first r ranks of every part are one view,
    and the parts' B transposed side by side, [slots, rank, out]. A part an adapter
    does not target stays zero, as does a rank beyond its own."""

    def __init__(self, fan_in: int, part_outs: list[int], slots: int, rank: int, dtype, device):
        self.a = torch.zeros(slots, rank, len(part_outs), fan_in, dtype=dtype, device=device)
        self.b = torch.zeros(slots, rank, sum(part_outs), dtype=dtype, device=device)
        ends = list(itertools.accumulate(part_outs))
        self.part_columns = [slice(end - out, end) for out, end in zip(part_outs, ends, strict=True)]

    def load(self, slot: int, parts: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        for k, part in enumerate(parts):
            if part is not None:
                a, b = part
                self.a[slot, : a.shape[0], k] = a
                self.b[slot, : b.shape[1], self.part_columns[k]] = b.T

    def apply(self, y: torch.Tensor, x: torch.Tensor, batch: LoRABatch) -> None:
        """y += the LoRA delta of x, for the rows that carry an adapter (in place)."""
        groups, rank, num_parts = batch.num_groups, batch.rank, len(self.part_columns)
        rows = batch.group_size * x.shape[1]  # per group
        xg = x if batch.dense else x.index_select(0, batch.gather_rows)
        # In float64: bmm blocks its sums by the number of rows, so in float32 a row's
        # delta would move in its last bits with its batch (or with a prefix-cache hit),
        # which 8-bit activations downstream can turn into another token. Rounded from
        # float64, a row's delta is the same whatever its batch.
        xg = xg.reshape(groups, rows, x.shape[-1]).double()
        # Only the batch's ranks are read: slots are padded to max_lora_rank.
        a = batch.select(self.a[:, :rank]).reshape(groups, rank * num_parts, x.shape[-1]).double()
        shrunk = torch.bmm(xg, a.transpose(1, 2))
        b = batch.select(self.b[:, :rank]).double()
        if batch.dense and num_parts == 1:
            y.view(groups, rows, y.shape[-1]).add_(torch.bmm(shrunk, b))
            return
        if num_parts > 1:
            # Each part's ranks made contiguous (a small copy): a strided left operand
            # sends bmm down a path twice as slow.
            shrunk = shrunk.view(groups, rows, rank, num_parts).permute(3, 0, 1, 2).contiguous()
        else:
            shrunk = shrunk.unsqueeze(0)
        deltas = [torch.bmm(shrunk[k], b[..., columns]) for k, columns in enumerate(self.part_columns)]
        delta = (torch.cat(deltas, dim=-1) if num_parts > 1 else deltas[0]).to(y.dtype)
        if batch.dense:
            y += delta.view_as(y)
            return
        delta = delta.view(groups * batch.group_size, x.shape[1], y.shape[-1]).index_select(0, batch.positions)
        # One add into the whole output (an add into a column slice takes a slow path);
        # index_put_ measured 5x faster than index_add_ here.
        y.index_put_((batch.rows,), delta, accumulate=True)


class LoRAManager:
    """Registered adapters (kept in host memory) and the slots of the resident ones.

    A running sequence pins its adapter's slot; an adapter is made resident when a
    sequence using it is admitted, evicting the least recently used unpinned one.
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, max_loras: int, max_rank: int, dtype, device):
        self.model = model
        self.model_config = cfg
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.dtype = dtype
        self.device = device
        self.adapters: dict[str, LoRAAdapter] = {}
        self._resident: OrderedDict[int, int] = OrderedDict()  # adapter id -> slot, LRU first
        self._slot_adapter: list[LoRAAdapter | None] = [None] * max_loras
        self._pins = [0] * max_loras
        self._stacks: list[dict[str, LoRAStack]] | None = None  # allocated with the first adapter

    def load(self, name: str, path: str) -> LoRAAdapter:
        """Reads and validates an adapter; touches no engine state (any thread)."""
        return load_lora(name, path, self.model_config, self.max_rank)

    def add(self, adapter: LoRAAdapter) -> None:
        if adapter.name in self.adapters:
            raise InvalidRequestError(f"a LoRA adapter named {adapter.name!r} is already loaded", param="name")
        if self._stacks is None:
            self._stacks = self._allocate()
        self.adapters[adapter.name] = adapter

    def remove(self, name: str) -> None:
        """New requests can no longer use it; running ones finish with it."""
        adapter = self.get(name)
        del self.adapters[name]
        slot = self._resident.get(adapter.id)
        if slot is not None and not self._pins[slot]:
            self._evict(adapter, slot)

    def get(self, name: str) -> LoRAAdapter:
        try:
            return self.adapters[name]
        except KeyError:
            raise InvalidRequestError(f"LoRA adapter {name!r} is not loaded", param="lora") from None

    def acquire(self, adapter: LoRAAdapter) -> int | None:
        """The slot holding `adapter`, loaded if need be and pinned; None while every
        slot is pinned by running sequences."""
        slot = self._resident.get(adapter.id)
        if slot is None:
            slot = self._free_slot()
            if slot is None:
                return None
            self._load(slot, adapter)
        self._resident.move_to_end(adapter.id)
        self._pins[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        self._pins[slot] -= 1
        adapter = self._slot_adapter[slot]
        if not self._pins[slot] and adapter is not None and self.adapters.get(adapter.name) is not adapter:
            self._evict(adapter, slot)  # removed while it ran

    def _free_slot(self) -> int | None:
        if None in self._slot_adapter:
            return self._slot_adapter.index(None)
        for adapter_id, slot in self._resident.items():
            if not self._pins[slot]:
                adapter = self._slot_adapter[slot]
                assert adapter is not None and adapter.id == adapter_id
                self._evict(adapter, slot)
                return slot
        return None

    def _evict(self, adapter: LoRAAdapter, slot: int) -> None:
        del self._resident[adapter.id]
        self._slot_adapter[slot] = None

    def _load(self, slot: int, adapter: LoRAAdapter) -> None:
        assert self._stacks is not None
        for layer, stacks in enumerate(self._stacks):
            for fused, stack in stacks.items():
                stack.load(slot, [adapter.weights.get((layer, part)) for part in FUSED[fused]])
        self._slot_adapter[slot] = adapter
        self._resident[adapter.id] = slot

    def _allocate(self) -> list[dict[str, LoRAStack]]:
        shapes = target_shapes(self.model_config)
        projections = [p for p in FUSED if not (self.model_config.is_moe and p in ("gate_up_proj", "down_proj"))]
        all_stacks = []
        for layer in self.model.layers:
            stacks = {}
            for fused in projections:
                parts = FUSED[fused]
                fan_in = shapes[parts[0]][0]
                outs = [shapes[p][1] for p in parts]
                stacks[fused] = LoRAStack(fan_in, outs, self.max_loras, self.max_rank, self.dtype, self.device)
            layer.attach_lora(stacks)
            all_stacks.append(stacks)
        return all_stacks
