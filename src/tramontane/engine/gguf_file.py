"""GGUF (llama.cpp) checkpoints: header parsing, tensors in HF naming, ModelConfig.

The header is parsed here with `struct` rather than with `gguf.GGUFReader`: the
reader builds a numpy memmap view per array element, which for a 49k-token
vocabulary costs ~4 s of the load, against ~0.1 s here. Everything else comes
from the `gguf` package: its constants, block sizes and `gguf.quants.dequantize`.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
)
from gguf.quants import dequantize, quant_shape_to_byte_shape

from tramontane.engine.config import ModelConfig
from tramontane.engine.errors import ModelLoadError
from tramontane.engine.tokenizer import Tokenizer

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_MAX_DIMS = 4  # GGML_MAX_DIMS
# llama.cpp writes Mistral and Mixtral checkpoints as "llama" too.
_SUPPORTED_ARCHS = ("llama", "mistral", "qwen3", "qwen3moe", "gemma3")
# What llama.cpp assumes for a gemma3 file that does not say: every sixth layer
# global, a 10k rotary base on the sliding ones.
_GEMMA3_PATTERN = 6
_GEMMA3_LOCAL_THETA = 10000.0


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: the reverse of ggml's ne[]
    qtype: GGMLQuantizationType
    offset: int  # absolute, in bytes from the start of the file
    nbytes: int


class _Cursor:
    """Little-endian reads over the mapped file that fail cleanly past its end."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise _Truncated
        self.pos += n
        return start

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        (n,) = self.unpack("<Q")
        start = self.take(n)
        return self.buf[start : start + n].decode("utf-8", errors="replace")

    def value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.FLOAT32:
            # Stored as float32: its shortest decimal form (1e-05, not
            # 9.999999747e-06) is the value the model's own config had.
            return float(str(np.float32(self.unpack("<f")[0])))
        if vtype != GGUFValueType.ARRAY:
            return self.unpack("<" + _SCALAR_FORMATS[vtype])[0]
        item_raw, count = self.unpack("<IQ")
        item = GGUFValueType(item_raw)
        if item in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            return [self.value(item) for _ in range(count)]
        dtype = np.dtype("<" + _SCALAR_FORMATS[item])
        start = self.take(count * dtype.itemsize)
        return np.frombuffer(self.buf, dtype, count, start).tolist()


class GGUFFile:
    """A GGUF file's metadata and tensor directory, over a private memory map.

    The map is copy-on-write so that tensors stored unquantized (F32/F16/BF16)
    come back as writable zero-copy views instead of private copies.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as e:  # ValueError: empty file
            raise ModelLoadError(f"cannot read GGUF file {path}: {e}") from e
        try:
            self._parse()
        except _Truncated:
            raise ModelLoadError(f"{path} is truncated: its header runs past the end of the file") from None
        except (struct.error, ValueError, KeyError, OverflowError) as e:
            raise ModelLoadError(f"{path} is not a valid GGUF file: {e!r}") from None

    def _parse(self) -> None:
        cur = _Cursor(self._buf)
        if len(self._buf) < 4 or cur.unpack("<I")[0] != GGUF_MAGIC:
            raise ModelLoadError(f"{self.path} is not a GGUF file (bad magic number)")
        version, n_tensors, n_kv = cur.unpack("<IQQ")
        if version & 0xFFFF == 0:
            raise ModelLoadError(f"{self.path} is a big-endian GGUF file, which is not supported")
        if version not in (2, 3):
            raise ModelLoadError(f"{self.path} has GGUF version {version}; versions 2 and 3 are supported")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(GGUFValueType(cur.unpack("<I")[0]))
        raw_infos = []
        for _ in range(n_tensors):
            name = cur.string()
            (n_dims,) = cur.unpack("<I")
            if n_dims > _MAX_DIMS:
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            dims = cur.unpack(f"<{n_dims}Q")
            qtype_raw, offset = cur.unpack("<IQ")
            raw_infos.append((name, tuple(reversed(dims)), GGMLQuantizationType(qtype_raw), offset))
        align = int(self.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        if align <= 0 or align & (align - 1):
            raise ValueError(f"alignment {align} is not a power of two")
        data_start = -(-cur.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, qtype, offset in raw_infos:
            block, type_size = GGML_QUANT_SIZES[qtype]
            info = TensorInfo(name, shape, qtype, data_start + offset, math.prod(shape) // block * type_size)
            if info.offset + info.nbytes > len(self._buf):
                raise ModelLoadError(
                    f"{self.path} is truncated: tensor {name} ends at byte {info.offset + info.nbytes}, "
                    f"the file has {len(self._buf)}"
                )
            self.tensors[name] = info

    def read(self, info: TensorInfo) -> torch.Tensor:
        """The tensor as torch: F16/BF16/F32 as stored, quantized types dequantized to f32."""
        raw = np.frombuffer(self._buf, np.uint8, info.nbytes, info.offset)
        if info.qtype == GGMLQuantizationType.F32:
            return torch.from_numpy(raw.view(np.float32).reshape(info.shape))
        if info.qtype == GGMLQuantizationType.F16:
            return torch.from_numpy(raw.view(np.float16).reshape(info.shape))
        if info.qtype == GGMLQuantizationType.BF16:
            return torch.from_numpy(raw.view(np.int16).reshape(info.shape)).view(torch.bfloat16)
        try:
            values = dequantize(raw.reshape(quant_shape_to_byte_shape(info.shape, info.qtype)), info.qtype)
        except (NotImplementedError, ValueError) as e:
            raise ModelLoadError(f"cannot dequantize {info.name} ({info.qtype.name}): {e}") from e
        return torch.from_numpy(values)


def _meta(md: dict[str, Any], key: str, default: Any = None, *, required: bool = False) -> Any:
    if key in md:
        return md[key]
    if required:
        raise ModelLoadError(f"GGUF metadata lacks {key!r}")
    return default


def _rope_scaling(gguf: GGUFFile, arch: str, theta: float, head_dim: int) -> dict[str, Any] | None:
    md = gguf.metadata
    kind = _meta(md, f"{arch}.rope.scaling.type")
    factor = _meta(md, f"{arch}.rope.scaling.factor")
    if kind is None and _meta(md, f"{arch}.rope.scale_linear"):  # older files' spelling
        kind, factor = "linear", md[f"{arch}.rope.scale_linear"]
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor)}
        original = _meta(md, f"{arch}.rope.scaling.original_context_length") or _meta(md, f"{arch}.context_length")
        scaling["original_max_position_embeddings"] = int(original or 4096)
        return scaling
    if kind not in (None, "none"):
        raise ModelLoadError(f"unsupported rope scaling {kind!r} in {gguf.path}")
    if "rope_freqs.weight" in gguf.tensors:
        return _llama3_rope_scaling(gguf.read(gguf.tensors["rope_freqs.weight"]).float(), theta, head_dim)
    return None


def _llama3_rope_scaling(freq_factors: torch.Tensor, theta: float, head_dim: int) -> dict[str, Any]:
    """Recover HF's llama3 rope_scaling from the per-frequency divisors llama.cpp stores.

    llama.cpp's converter bakes Llama 3.1+'s scaling into `rope_freqs` and drops
    its parameters. Every released Llama 3.x model uses low_freq_factor=1,
    high_freq_factor=4 and an 8192-token original context, so those are assumed,
    the factor is read off the largest divisor, and the assumption is checked by
    recomputing the divisors.
    """
    factor, low, high, original = float(freq_factors.max()), 1.0, 4.0, 8192
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    expected = 1.0 / ((1 - smooth) / factor + smooth)
    expected = torch.where(wavelen < original / high, 1.0, torch.where(wavelen > original / low, factor, expected))
    if expected.shape != freq_factors.shape or not torch.allclose(expected.float(), freq_factors, rtol=1e-3):
        raise ModelLoadError("unsupported rope_freqs tensor: it does not match Llama 3 rope scaling")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }


def _model_config(gguf: GGUFFile) -> ModelConfig:
    """The architecture from the metadata; token ids are filled in from the tokenizer."""
    arch = _meta(gguf.metadata, "general.architecture", required=True)
    if arch not in _SUPPORTED_ARCHS:
        raise ModelLoadError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(_SUPPORTED_ARCHS)}")
    if "token_embd.weight" not in gguf.tensors:
        raise ModelLoadError(f"{gguf.path} has no token_embd.weight tensor")
    try:
        config = _architecture_config(gguf, arch)
        return _gemma3_config(gguf, config) if arch == "gemma3" else config
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ModelLoadError(f"{gguf.path} has a malformed {arch}.* metadata value: {e}") from e


def _gemma3_config(gguf: GGUFFile, config: ModelConfig) -> ModelConfig:
    """Gemma 3's own settings on top of the common ones, read as llama.cpp reads them.

    The layer kinds come from `attention.sliding_window_pattern` (a period, or one
    flag per layer, true for sliding) and the sliding layers' rotary base from
    `rope.freq_base_swa`; files without them get llama.cpp's defaults. The query
    scale is `attention.scale` where written, else llama.cpp's rule: 1/sqrt(head_dim),
    except the 62-layer (27B) model's 1/sqrt(hidden/heads), its query_pre_attn_scalar.
    """
    md, layers = gguf.metadata, config.num_hidden_layers
    if _meta(md, "gemma3.final_logit_softcapping") or _meta(md, "gemma3.attn_logit_softcapping"):
        raise ModelLoadError("Gemma checkpoints with logit soft-capping are not supported")
    pattern = _meta(md, "gemma3.attention.sliding_window_pattern", _GEMMA3_PATTERN)
    if isinstance(pattern, list):
        if len(pattern) != layers:
            raise ValueError(f"sliding_window_pattern has {len(pattern)} flags for {layers} layers")
        sliding = [bool(flag) for flag in pattern]
    else:
        sliding = [(i + 1) % int(pattern) != 0 for i in range(layers)]
    scale = _meta(md, "gemma3.attention.scale")
    if scale is None:
        scale = (config.hidden_size / config.num_attention_heads if layers == 62 else config.head_dim) ** -0.5
    return dataclasses.replace(
        config,
        architecture="gemma3_text",
        rms_norm_eps=float(_meta(md, "gemma3.attention.layer_norm_rms_epsilon", 1e-6)),
        layer_types=["sliding_attention" if s else "full_attention" for s in sliding],
        rope_local_theta=float(_meta(md, "gemma3.rope.freq_base_swa", _GEMMA3_LOCAL_THETA)),
        attention_scale=float(scale),
        embedding_scale=config.hidden_size**0.5,
        hidden_act="gelu_pytorch_tanh",
        qk_norm=True,
        sandwich_norms=True,
    )


def _architecture_config(gguf: GGUFFile, arch: str) -> ModelConfig:
    md = gguf.metadata
    hidden = int(_meta(md, f"{arch}.embedding_length", required=True))
    heads = int(_meta(md, f"{arch}.attention.head_count", required=True))
    head_dim = int(
        _meta(md, f"{arch}.attention.key_length") or _meta(md, f"{arch}.rope.dimension_count") or hidden // heads
    )
    theta = float(_meta(md, f"{arch}.rope.freq_base", 10000.0))
    experts = int(_meta(md, f"{arch}.expert_count", 0))
    ffn = _meta(md, f"{arch}.expert_feed_forward_length") if experts else None
    window = _meta(md, f"{arch}.attention.sliding_window")
    qwen = arch.startswith("qwen3")
    return ModelConfig(
        architecture=("qwen3_moe" if qwen else "mixtral") if experts else arch,
        vocab_size=gguf.tensors["token_embd.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=int(ffn or _meta(md, f"{arch}.feed_forward_length", required=True)),
        num_hidden_layers=int(_meta(md, f"{arch}.block_count", required=True)),
        num_attention_heads=heads,
        num_key_value_heads=int(_meta(md, f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(_meta(md, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=theta,
        rope_scaling=_rope_scaling(gguf, arch, theta, head_dim),
        max_position_embeddings=int(_meta(md, f"{arch}.context_length", 4096)),
        sliding_window=int(window) if window else None,
        tie_word_embeddings="output.weight" not in gguf.tensors,
        num_local_experts=experts,
        num_experts_per_tok=int(_meta(md, f"{arch}.expert_used_count", 2)),
        norm_topk_prob=bool(_meta(md, f"{arch}.expert_weights_norm", True)),
        qk_norm=qwen,
    )


_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens.weight",
    "output_norm": "model.norm.weight",
    "output": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "block_sparse_moe.gate",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
# Gemma's norms around attention and the MLP. Its norm weights are stored with
# Gemma's +1 already added by the converter: the plain scale our layers use.
_GEMMA_LAYER_NAMES = _LAYER_NAMES | {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Mixtral's expert weights: w1 = gate, w2 = down, w3 = up.
_EXPERT_NAMES = {"ffn_gate": "w1", "ffn_down": "w2", "ffn_up": "w3"}
_SKIPPED = {"rope_freqs.weight"}  # folded into ModelConfig.rope_scaling


def _unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    # llama.cpp's converter reorders each head's q/k rows so that the two halves
    # HF's rotate_half pairs up become adjacent rows (its rope pairs dims 2i, 2i+1);
    # this puts the halves back as two blocks.
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _hf_tensors(name: str, tensor: torch.Tensor, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """The HF-named tensors one GGUF tensor stands for."""
    stem, _, suffix = name.rpartition(".")
    parts = stem.split(".")
    if suffix == "weight" and stem in _GLOBAL_NAMES:
        yield _GLOBAL_NAMES[stem], tensor
        return
    if suffix != "weight" or parts[0] != "blk" or len(parts) not in (3, 4) or not parts[1].isdigit():
        raise ModelLoadError(f"unexpected tensor {name!r} in GGUF file")
    prefix, kind = f"model.layers.{parts[1]}", parts[2]
    layer_names = _GEMMA_LAYER_NAMES if config.sandwich_norms else _LAYER_NAMES
    if len(parts) == 4 and kind in _EXPERT_NAMES and parts[3].isdigit():  # older per-expert layout
        yield f"{prefix}.block_sparse_moe.experts.{parts[3]}.{_EXPERT_NAMES[kind]}.weight", tensor
    elif len(parts) == 3 and kind.endswith("_exps") and kind[: -len("_exps")] in _EXPERT_NAMES:
        w = _EXPERT_NAMES[kind[: -len("_exps")]]
        for e in range(tensor.shape[0]):
            yield f"{prefix}.block_sparse_moe.experts.{e}.{w}.weight", tensor[e]
    elif len(parts) == 3 and kind in layer_names:
        # llama.cpp reorders q/k rows for its pairwise rope in Llama-family files only.
        permuted = config.architecture in ("llama", "mistral", "mixtral")
        if kind == "attn_q" and permuted:
            tensor = _unpermute_rope_rows(tensor, config.num_attention_heads)
        elif kind == "attn_k" and permuted:
            tensor = _unpermute_rope_rows(tensor, config.num_key_value_heads)
        yield f"{prefix}.{layer_names[kind]}.weight", tensor
    else:
        raise ModelLoadError(f"unexpected tensor {name!r} in GGUF file")


def load_gguf(
    path: str, on_progress: Callable[[int, int], None] | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, HF-named tensors and tokenizer of a GGUF checkpoint."""
    gguf = GGUFFile(path)
    config = _model_config(gguf)
    tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata)
    config = dataclasses.replace(
        config, bos_token_id=tokenizer.bos_token_id, eos_token_ids=sorted(tokenizer.eos_token_ids)
    )
    infos = [info for name, info in gguf.tensors.items() if name not in _SKIPPED]
    tensors: dict[str, torch.Tensor] = {}
    if on_progress:
        on_progress(0, len(infos))
    for done, info in enumerate(infos, 1):
        try:
            tensors.update(_hf_tensors(info.name, gguf.read(info), config))
        except (RuntimeError, ValueError) as e:  # e.g. a shape the head counts cannot split
            raise ModelLoadError(f"{path}: tensor {info.name} does not fit the model's metadata: {e}") from e
        if on_progress:
            on_progress(done, len(infos))
    return config, tensors, tokenizer
