"""Prepared models: the model module as the runner uses it (weights dequantized
from the GGUF, re-quantized and repacked for the matmul kernels), with the
checkpoint's config and tokenizer, saved once and memory-mapped by every later
start.

Preparing the default model takes seconds of CPU (dequantize, quantize, repack,
and parsing a vocabulary of 49k tokens out of the GGUF metadata); loading the
prepared file takes a fraction of a second. (int8 linears are the exception:
fbgemm's packing cannot be saved, so the file holds their int8 rows and loading
packs them again, about a second for the default model.) The mapping is private and
the weights are never written, so their pages stay the page cache's own: every
replica of the model shares one copy in host memory, and a start after the first
reads nothing from disk.

The whole module is saved, not a state dict, because rebuilding the module tree
around a state dict would run the quantization again. It is read back by an
unpickler that resolves nothing but tensors and the engine's own module classes
listed here, as torch's weights-only unpickler does; that one is written in
Python and took a third of a deep wake, this one is the C unpickler.

The file name hashes what the module depends on (the checkpoint files' paths,
sizes and modification times, the precision asked for, the device kind, this
torch, and the source of the modules), so a changed model, setting or module
code prepares anew instead of loading something stale."""

from __future__ import annotations

import collections
import hashlib
import inspect
import json
import logging
import os
import pickle
import platform
from pathlib import Path

import torch

from . import cpu_kernels, layers, model, vision
from .checkpoint import Checkpoint
from .config import EngineConfig, ModelConfig, VisionConfig
from .model import CausalLM
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

_ALLOWED = [
    model.CausalLM,
    model.DecoderLayer,
    model.Attention,
    model.MLP,
    model.SparseMoE,
    layers.Linear,
    layers.RMSNorm,
    layers.RotaryEmbedding,
    vision.VisionModel,
    vision.VisionEncoder,
    vision.VisionBlock,
    vision.PatchMerger,
    ModelConfig,
    VisionConfig,
    torch.nn.Linear,
    torch.nn.ModuleList,
    torch.nn.Embedding,
    collections.OrderedDict,
    set,
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.int8,
    torch.int32,
    torch.uint8,
    torch._utils._rebuild_tensor_v2,
    torch._utils._rebuild_parameter,
]


def _qualified(obj: object) -> tuple[str, str]:
    if isinstance(obj, torch.dtype):
        return "torch", str(obj).removeprefix("torch.")
    return obj.__module__, obj.__qualname__


_ALLOWED_NAMES = {_qualified(obj): obj for obj in _ALLOWED}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        module = {"__builtin__": "builtins"}.get(module, module)
        try:
            return _ALLOWED_NAMES[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a prepared model") from None


class _AllowListPickle:
    """The `pickle_module` torch.load uses: the standard module, restricted."""

    Unpickler = _AllowListUnpickler
    load = staticmethod(pickle.load)
_SOURCE_DIGEST = hashlib.sha256(
    "".join(inspect.getsource(m) for m in (model, layers, cpu_kernels, vision)).encode()
).hexdigest()


def _checkpoint_files(path: str) -> list[Path]:
    root = Path(path)
    return sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]


def prepared_path(directory: str, checkpoint: str, config: EngineConfig) -> Path:
    """Where the prepared weights of `checkpoint` under `config` live in `directory`."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in _checkpoint_files(checkpoint)]
    identity = {
        "files": files,
        "quantization": config.quantization,
        "dtype": config.dtype,
        "device": torch.device(config.device).type,
        "torch": torch.__version__,
        "machine": platform.machine(),
        # Our kernels' blocks or PyTorch's packing (where ours do not run).
        "cpu_kernels": cpu_kernels.available(),
        "source": _SOURCE_DIGEST,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return Path(directory) / f"{Path(checkpoint).stem}-{digest}.pt"


def load_prepared(path: Path) -> tuple[Checkpoint, CausalLM] | None:
    """The checkpoint (config and tokenizer, no tensors) and the prepared model,
    its tensors mapped from the file (no copy); None when there is none yet or it
    is unreadable (then the caller prepares anew)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=False, pickle_module=_AllowListPickle)
        prepared = saved["model"]
        if not isinstance(prepared, CausalLM):
            raise ValueError("not a prepared model")
        checkpoint = Checkpoint(prepared.config, {}, Tokenizer.from_state(saved["tokenizer"]), saved["name"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:
        log.warning("ignoring unreadable prepared model %s: %s", path, exc)
        return None
    return checkpoint, prepared


def save_prepared(path: Path, checkpoint: Checkpoint, prepared: CausalLM) -> None:
    """Saves a CPU model atomically (write then rename): a concurrent start sees
    the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    saved = {"model": prepared, "tokenizer": checkpoint.tokenizer.to_state(), "name": checkpoint.name}
    try:
        torch.save(saved, partial)
        os.replace(partial, path)
    except OSError as exc:  # a full or read-only disk costs the next start time, nothing else
        log.warning("cannot save prepared model to %s: %s", path, exc)
        partial.unlink(missing_ok=True)
