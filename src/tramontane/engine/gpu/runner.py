"""The model runner of the GPU path: GPUCausalLM, its paged KV cache, decode graphs,
and light sleep. Same interface as engine/runner.py's ModelRunner, which the CPU
keeps (our C kernels); this one runs on CUDA devices, and anywhere when forced
(`EngineConfig.attention_backend = "flex"`), which is how CPU tests check it."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch.nn.attention.flex_attention import flex_attention

from ..config import EngineConfig, ModelConfig
from ..errors import InvalidRequestError, ModelLoadError
from ..lora import LoRAAdapter, LoRAManager
from ..scheduler import ScheduledBatch
from .cuda_graphs import DecodeGraphs, bucket_for, decode_buckets, pad_decode
from .model import GPUCausalLM
from .moe import GroupedMoE
from .paged_flex import DEFAULT_Q_BLOCK, FlexMetadata, StepShape, build_flex_metadata, dense_attention
from .parallel import Parallel, init_tensor_parallel
from .quant import GPU_QUANTIZATIONS, fp8_supported

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def uses_gpu_path(config: EngineConfig) -> bool:
    """The GPU runner serves CUDA devices, and any device when forced."""
    backend = config.attention_backend
    return backend == "flex" or (backend == "auto" and torch.device(config.device).type == "cuda")


def resolve_gpu_precision(config: EngineConfig, device: torch.device) -> tuple[str, torch.dtype]:
    """bf16 weights and activations by default; "fp8" and "int4" on request."""
    quant = config.quantization
    if quant in ("auto", "bf16"):
        quant = "none"
    if quant not in GPU_QUANTIZATIONS:
        raise ModelLoadError(f"quantization {quant!r} is not served on {device.type}; "
                             f"choose one of {', '.join(GPU_QUANTIZATIONS)}")
    if quant == "fp8" and not fp8_supported(device):
        raise ModelLoadError("fp8 needs a GPU of compute capability 8.9 or more (Ada, Hopper)")
    dtype = "bfloat16" if config.dtype == "auto" else config.dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unsupported dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return quant, _DTYPES[dtype]


def _allow_shape_buckets() -> None:
    """One compiled flex kernel per (query rows, sequences) bucket: a few dozen,
    past torch.compile's default of 8 (after which it would run flex eagerly)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 128))


class _NoLoRA(LoRAManager):
    def add(self, adapter: LoRAAdapter) -> None:
        raise InvalidRequestError("LoRA adapters are not served on the GPU path yet", param="lora")


class GPUModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        tensors: Mapping[str, torch.Tensor],
        config: EngineConfig,
        parallel: Parallel | None = None,
    ):
        self.config = config
        self.model_config = model_config
        self.device = torch.device(config.device)
        if parallel is None and config.tensor_parallel_size > 1:
            parallel = _join_group(config, self.device)
            if self.device.type == "cuda":  # one GPU per rank
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", parallel.rank)))
                torch.cuda.set_device(self.device)
        self.parallel = parallel or Parallel()
        self.quantization, self.dtype = resolve_gpu_precision(config, self.device)
        self.model = GPUCausalLM(model_config, tensors, self.quantization, self.dtype, self.device, self.parallel)
        self.loras = _NoLoRA(self.model, model_config, 0, 0, self.dtype, self.device)
        self.kv_heads = model_config.num_key_value_heads // self.parallel.world
        if config.num_kv_blocks is None:
            per_block = 2 * model_config.num_hidden_layers * self.kv_heads * model_config.head_dim
            per_block *= self.dtype.itemsize * config.block_size
            config.num_kv_blocks = max(int(config.kv_cache_memory_gb * 2**30) // per_block, 1)
        self.num_kv_blocks = config.num_kv_blocks
        # One more block than the scheduler hands out: where graph padding writes.
        self.pad_block = self.num_kv_blocks
        self.q_block = DEFAULT_Q_BLOCK
        on_cuda = self.device.type == "cuda"
        # The fused kernels need torch.compile (CUDA, or the CPU template when asked);
        # off CUDA the dense reference serves by default (tests on tiny caches).
        # Static shapes, bucketed (build_flex_metadata): PyTorch's CPU flex template
        # miscompiles dynamic shapes (checked with torch 2.13), and static kernels are
        # the ones CUDA graphs replay anyway.
        self.compiled = on_cuda or config.compile_attention
        self.attention = dense_attention
        if self.compiled:
            _allow_shape_buckets()
            self.attention = torch.compile(flex_attention, dynamic=False)
        # Flex's CUDA kernels tile by its sparse block sizes, which must divide theirs:
        # query tiles of q_block rows, key tiles of at most a cache block.
        self.kernel_options = None
        if on_cuda:
            self.kernel_options = {"BLOCK_M": self.q_block, "BLOCK_N": math.gcd(config.block_size, 64)}
        self.graphs = None
        # The per-expert fallback reads offsets on the host: no graph can hold it.
        host_synced = any(isinstance(m, GroupedMoE) and not m.grouped for m in self.model.modules())
        if on_cuda and config.cuda_graphs and not host_synced:
            self.graphs = DecodeGraphs(decode_buckets(config.max_num_seqs), self._run)
        self._host_weights: list[torch.Tensor] | None = None
        self._allocate_kv_cache()

    @property
    def num_slots(self) -> int:
        return (self.num_kv_blocks + 1) * self.config.block_size

    # -- memory: the KV cache and light sleep --------------------------------------

    # Public methods are what the engine calls on rank 0; each is mirrored on the
    # other tensor-parallel ranks (serve_worker) before it runs here.

    def allocate_kv_cache(self) -> None:
        self._mirror("call", "allocate_kv_cache")
        self._allocate_kv_cache()

    def free_kv_cache(self) -> None:
        self._mirror("call", "free_kv_cache")
        self._free_kv_cache()

    def offload_weights(self) -> None:
        self._mirror("call", "offload_weights")
        self._offload_weights()

    def restore_weights(self) -> None:
        self._mirror("call", "restore_weights")
        self._restore_weights()

    def _allocate_kv_cache(self) -> None:
        cfg = self.model_config
        cache = torch.zeros(
            (cfg.num_hidden_layers, 2, self.kv_heads, self.num_slots, cfg.head_dim), dtype=self.dtype, device=self.device
        )
        for attn, layer_cache in zip(self.model.attention_layers(), cache, strict=True):
            attn.k_cache, attn.v_cache = layer_cache[0], layer_cache[1]

    def _free_kv_cache(self) -> None:
        for attn in self.model.attention_layers():
            attn.k_cache = attn.v_cache = torch.empty(0)
        if self.graphs is not None:
            self.graphs.clear()  # they hold the cache's and the weights' addresses
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _tensors(self) -> list[torch.Tensor]:
        return list(itertools.chain(self.model.parameters(), self.model.buffers()))

    def _offload_weights(self) -> None:
        """Moves every weight to host memory (pinned where CUDA is, so that waking
        copies at full bus speed) and frees the device's copy."""
        pin = torch.cuda.is_available()
        host = []
        for tensor in self._tensors():
            copy = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
            copy.copy_(tensor, non_blocking=pin)
            host.append(copy)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for tensor, copy in zip(self._tensors(), host, strict=True):
            tensor.data = copy
        self._host_weights = host
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _restore_weights(self) -> None:
        """Copies the weights back to the device: every copy queued, one wait."""
        if self._host_weights is None:
            return
        for tensor in self._tensors():
            tensor.data = tensor.data.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._host_weights = None

    @property
    def weights_on_host(self) -> bool:
        return self._host_weights is not None

    # -- steps -----------------------------------------------------------------------

    def _run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: FlexMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, meta, meta.last_token_index, self.attention, self.kernel_options)

    def _metadata(self, shapes: list[StepShape]) -> FlexMetadata:
        return build_flex_metadata(
            shapes, self.config.block_size, self.num_slots, self.model_config.sliding_window, self.device,
            self.q_block, bucketed=self.compiled,
        )

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[int]]:
        """Run one step. Returns logits [k, vocab] and the batch rows they belong to:
        the sequences whose computed tokens reach their end (so they sample)."""
        shapes, tokens, sampling_rows = [], [], []
        for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            shapes.append(StepShape(start, n, list(seq.block_table)))
            tokens.extend(seq.token_ids[start : start + n])
            if start + n == seq.num_tokens:
                sampling_rows.append(row)
        self._mirror("step", (shapes, tokens))
        logits = self.run_step(shapes, tokens)
        rows = torch.tensor(sampling_rows, dtype=torch.long, device=self.device)
        # Reading the sampled rows' logits is the step's one synchronisation.
        return logits.index_select(0, rows).cpu(), sampling_rows

    @torch.inference_mode()
    def run_step(self, shapes: list[StepShape], tokens: list[int]) -> torch.Tensor:
        """Logits [sequences (or their bucket), vocab] of the step's last tokens."""
        bucket = None
        if self.graphs is not None and all(s.count == 1 for s in shapes):
            bucket = bucket_for(len(shapes), self.graphs.buckets)
        if bucket is not None:
            shapes, tokens = pad_decode(shapes, tokens, bucket, self.pad_block)
        positions = [s.start + i for s in shapes for i in range(s.count)]
        input_ids = torch.tensor(tokens, dtype=torch.long).to(self.device, non_blocking=True)
        pos = torch.tensor(positions, dtype=torch.long).to(self.device, non_blocking=True)
        meta = self._metadata(shapes)
        if bucket is not None:
            return self.graphs.replay(input_ids, pos, meta)
        return self._run(input_ids, pos, meta)

    # -- tensor parallelism: rank 0 drives, the other ranks mirror -------------------

    def _mirror(self, kind: str, payload: object = None) -> None:
        if self.parallel.enabled and self.parallel.rank == 0:
            dist.broadcast_object_list([(kind, payload)], src=0, group=self.parallel.group)

    def shutdown(self) -> None:
        """Releases the other ranks' serve_worker loops (rank 0, once done)."""
        self._mirror("stop")

    def serve_worker(self) -> None:
        """A rank other than 0: run what rank 0 runs, step by step, until it stops."""
        while True:
            message: list = [None]
            dist.broadcast_object_list(message, src=0, group=self.parallel.group)
            kind, payload = message[0]
            if kind == "stop":
                return
            if kind == "step":
                self.run_step(*payload)
            else:
                getattr(self, "_" + payload)()


def _join_group(config: EngineConfig, device: torch.device) -> Parallel:
    parallel = init_tensor_parallel(device)
    if parallel.world != config.tensor_parallel_size:
        raise ModelLoadError(f"tensor_parallel_size is {config.tensor_parallel_size} but the launcher started "
                             f"{parallel.world} processes (run one per GPU, e.g. with torchrun)")
    return parallel


def serve_tensor_parallel_worker(model_config: ModelConfig, tensors: Mapping[str, torch.Tensor],
                                 config: EngineConfig) -> None:
    """What every rank but 0 runs: its slice of the model, mirroring rank 0's engine."""
    GPUModelRunner(model_config, tensors, config).serve_worker()
