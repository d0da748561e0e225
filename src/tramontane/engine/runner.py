"""Model runner: owns the weights and the KV cache, turns a scheduled batch into
tensors, runs the forward pass and hands back logits for the sequences that sample."""

from __future__ import annotations

import itertools
import math
import mmap
from collections.abc import Callable

import torch

from .attention import build_metadata
from .config import EngineConfig, ModelConfig
from .errors import ModelLoadError
from .lora import LoRABatch, LoRAManager
from .model import CausalLM
from .scheduler import ScheduledBatch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_precision(config: EngineConfig, device: torch.device) -> tuple[str, torch.dtype]:
    """The quantization and dtype that "auto" stands for on this device."""
    on_cpu = device.type == "cpu"
    quant = config.quantization
    if quant == "auto":
        quant = "int4" if on_cpu else "none"
    if quant in ("int8", "int4") and not on_cpu:
        raise ModelLoadError(f"{quant} weights use PyTorch's CPU kernels; use none or bf16 on {device.type}")
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float32" if on_cpu else "bfloat16"
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unsupported dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return quant, _DTYPES[dtype]


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize


def _zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    # An anonymous mapping: the kernel hands out zeroed pages on first touch, so a
    # GiB of cache costs nothing until blocks are used (a start or a wake does not
    # wait on a memset), and dropping it gives the memory back to the OS at once.
    buffer = mmap.mmap(-1, math.prod(shape) * dtype.itemsize)
    return torch.frombuffer(buffer, dtype=dtype).view(shape)


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        tensors: dict[str, torch.Tensor],
        config: EngineConfig,
        prepared: CausalLM | None = None,
        on_prepared: Callable[[CausalLM], None] | None = None,
    ):
        """Builds the model from the checkpoint's `tensors`, or takes the already
        `prepared` one (engine/prepared.py); `on_prepared` sees a freshly built
        model while it is still on the CPU."""
        self.config = config
        self.model_config = model_config
        self.device = torch.device(config.device)
        self.quantization, self.dtype = resolve_precision(config, self.device)
        if prepared is None:
            prepared = CausalLM(model_config, tensors, self.quantization, self.dtype)
            if on_prepared is not None:
                on_prepared(prepared)
        self.model = prepared.to(self.device)
        if config.num_kv_blocks is None:
            per_block = kv_bytes_per_token(model_config, self.dtype) * config.block_size
            config.num_kv_blocks = max(int(config.kv_cache_memory_gb * 2**30) // per_block, 1)
        self.loras = LoRAManager(
            self.model, model_config, config.max_loras, config.max_lora_rank, self.dtype, self.device
        )
        self.num_kv_blocks = config.num_kv_blocks
        self.allocate_kv_cache()

    def allocate_kv_cache(self) -> None:
        slots = self.num_kv_blocks * self.config.block_size
        # One allocation for every layer's K and V; each layer gets views of it.
        cache = _zeroed(
            (len(self.model.layers), 2, slots, self.model_config.num_key_value_heads, self.model_config.head_dim),
            self.dtype,
            self.device,
        )
        for attn, layer_cache in zip(self.model.attention_layers(), cache, strict=True):
            attn.k_cache, attn.v_cache = layer_cache[0], layer_cache[1]

    def free_kv_cache(self) -> None:
        for attn in self.model.attention_layers():
            attn.k_cache = attn.v_cache = torch.empty(0)

    def offload_weights(self) -> None:
        """Moves the weights of a GPU model to pinned host memory, freeing the GPU
        (a no-op on CPU, where they already are)."""
        if self.device.type == "cpu":
            return
        for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
            host = torch.empty_like(tensor, device="cpu", pin_memory=True)
            host.copy_(tensor)
            tensor.data = host
        torch.cuda.empty_cache()

    def restore_weights(self) -> None:
        if self.device.type == "cpu":
            return
        for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
            tensor.data = tensor.data.to(self.device, non_blocking=True)
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[int]]:
        """Run one step. Returns logits [k, vocab] and the batch rows they belong to:
        the sequences whose computed tokens reach their end (so they sample)."""
        positions: list[list[int]] = []
        token_rows: list[list[int]] = []
        sampling_rows: list[int] = []
        for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            positions.append(list(range(start, start + n)))
            token_rows.append(seq.token_ids[start : start + n])
            if start + n == seq.num_tokens:
                sampling_rows.append(row)
        max_len = max(len(p) for p in positions)
        input_ids = torch.zeros(len(positions), max_len, dtype=torch.long)
        pos = torch.zeros(len(positions), max_len, dtype=torch.long)
        for row, (toks, p) in enumerate(zip(token_rows, positions, strict=True)):
            input_ids[row, : len(toks)] = torch.tensor(toks)
            pos[row, : len(p)] = torch.tensor(p)
        cfg = self.model_config
        tables = [s.block_table for s in batch.seqs]
        window = cfg.sliding_window if cfg.is_sliding(0) and not cfg.mixes_windows else None
        meta = build_metadata(positions, tables, self.config.block_size, window, self.device)
        if cfg.mixes_windows:
            meta.local = build_metadata(positions, tables, self.config.block_size, cfg.sliding_window, self.device)
        logits_index = torch.tensor(
            [row * max_len + len(positions[row]) - 1 for row in sampling_rows], dtype=torch.long
        )
        lora = LoRABatch.build(
            [(s.lora_slot, s.lora.rank) if s.lora_slot is not None else None for s in batch.seqs], self.device
        )
        images = self._image_embeds(batch, max_len)
        logits = self.model(
            input_ids.to(self.device), pos.to(self.device), meta, logits_index.to(self.device), lora, images
        )
        return logits.cpu(), sampling_rows

    def _image_embeds(self, batch: ScheduledBatch, max_len: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The embeddings of the [IMG] tokens this step computes, and their flat indices
        in the [B * max_len] batch; the vision model runs on a prompt's images the first
        time a step reaches one of their tokens."""
        indices: list[torch.Tensor] = []
        embeds: list[torch.Tensor] = []
        for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            if seq.images is None or self.model.vision is None:
                continue
            offsets, rows = seq.images.in_chunk(seq.num_computed_tokens, seq.num_computed_tokens + n)
            if len(rows):
                indices.append(offsets + row * max_len)
                embeds.append(seq.images.embeddings(self.encode_image)[rows])
        if not indices:
            return None
        return torch.cat(indices).to(self.device), torch.cat(embeds).to(self.device)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """One image's [IMG] token embeddings [tokens, hidden]."""
        assert self.model.vision is not None
        return self.model.vision(pixels.to(self.device)).to(self.dtype)
