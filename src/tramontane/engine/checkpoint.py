"""Loading a checkpoint (GGUF file, HF safetensors folder or Mistral's native
folder) into HF-named tensors."""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open

from tramontane.engine import mistral_format
from tramontane.engine.config import ModelConfig, VisionConfig
from tramontane.engine.errors import ModelLoadError
from tramontane.engine.gguf_file import GGUFFile, load_gguf
from tramontane.engine.tokenizer import Tokenizer
from tramontane.engine.vision import expected_vision_shapes

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

_SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen3", "qwen3_moe", "gemma3_text")
# Vision-language checkpoints: a Pixtral encoder in front of one of the text models above.
_VISION_MODEL_TYPES = ("llava", "mistral3")
_MOE_MODEL_TYPES = ("mixtral", "qwen3_moe")
SUPPORTED_FORMATS = "GGUF files, HF folders (config.json) and Mistral folders (params.json + consolidated.safetensors)"
_LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LAYER_NAMES = {
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "block_sparse_moe.gate.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight",
}
_EXPERT_NAME = re.compile(r"block_sparse_moe\.experts\.\d+\.w[123]\.weight")
# Qwen3-MoE's per-expert names in transformers 4 (gate, up and down projections).
_QWEN_EXPERT_NAME = re.compile(r"mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
_QWEN_EXPERT_W = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
_GLOBAL_NAMES = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq")  # a buffer some old checkpoints saved
# Llava/Mistral3 prefixes (transformers 5's first, then 4's) -> ours.
_VISION_RENAMES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.")


@dataclass
class Checkpoint:
    config: ModelConfig
    # HF names (model.layers.{i}.self_attn.q_proj.weight, ...); Mixtral experts as
    # model.layers.{i}.block_sparse_moe.experts.{e}.w{1,2,3}.weight.
    tensors: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    name: str


def load_checkpoint(path: str, on_progress: ProgressCallback | None = None, device: str = "cpu") -> Checkpoint:
    """Load a .gguf file, a HF folder (config.json, *.safetensors, tokenizer.json)
    or a Mistral folder (params.json, consolidated*.safetensors, a mistral-common
    tokenizer). A folder that has both layouts, as many of Mistral's repositories
    do, loads Mistral's: its tokenizer is the reference for its chat format.

    Tensors come back as float: f32 for quantized and f32 sources, f16/bf16 as
    stored. on_progress(done, total) is called as tensors load. A folder's
    tensors go from the mapped files straight to `device` (no host copy first).
    """
    if os.path.isdir(path) and mistral_format.is_mistral_dir(path):
        return _load_mistral_dir(path, on_progress, device)
    if os.path.isdir(path):
        return _load_hf_dir(path, on_progress, device)
    if os.path.isfile(path):
        config, tensors, tokenizer = load_gguf(path, on_progress)
        return Checkpoint(config, tensors, tokenizer, os.path.splitext(os.path.basename(path))[0])
    raise ModelLoadError(f"model path {path!r} does not exist")


def load_tokenizer(path: str) -> Tokenizer:
    """Only the tokenizer (and chat template) of a checkpoint: no weights are read."""
    if os.path.isdir(path) and mistral_format.is_mistral_dir(path):
        return Tokenizer.from_mistral_file(mistral_format.tokenizer_file(path))
    if os.path.isdir(path):
        return Tokenizer.from_hf_dir(path)
    if os.path.isfile(path):
        return Tokenizer.from_gguf_metadata(GGUFFile(path).metadata)
    raise ModelLoadError(f"model path {path!r} does not exist")


def _load_hf_dir(path: str, on_progress: ProgressCallback | None, device: str = "cpu") -> Checkpoint:
    raw = _read_json(os.path.join(path, "config.json"))
    if raw is None:
        raise ModelLoadError(f"{path} is not a model: supported are {SUPPORTED_FORMATS}")
    generation = _read_json(os.path.join(path, "generation_config.json")) or {}
    config_eos = _id_list(raw.get("eos_token_id")) + _id_list(generation.get("eos_token_id"))
    config = _model_config(raw)
    tokenizer = _hf_dir_tokenizer(path, config, config_eos)
    bos = config.bos_token_id if config.bos_token_id is not None else tokenizer.bos_token_id
    config = dataclasses.replace(config, bos_token_id=bos, eos_token_ids=sorted(tokenizer.eos_token_ids))
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in _read_safetensors(_safetensors_files(path), path, on_progress, device):
        name = _renamed(name) if config.vision is not None else name
        tensors.update(_hf_tensors(name, tensor, config))
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    if config.vision is not None and tokenizer.mistral is None:
        config = dataclasses.replace(config, vision=None)
        tensors = {k: v for k, v in tensors.items() if not k.startswith(_VISION_PREFIXES)}
    check_tensors(tensors, config, path)
    return Checkpoint(config, tensors, tokenizer, os.path.basename(os.path.normpath(path)))


def _hf_dir_tokenizer(path: str, config: ModelConfig, config_eos: list[int]) -> Tokenizer:
    """The folder's tokenizer. A vision model's image tokens are laid out by
    mistral-common's image encoder, so its tekken.json (which Mistral's HF
    repositories ship beside tokenizer.json) is the one read when present."""
    tekken = os.path.join(path, "tekken.json")
    if config.vision is not None and os.path.isfile(tekken):
        tokenizer = Tokenizer.from_mistral_file(tekken)
        mistral_format.check_image_tokenizer(tokenizer, config.vision, path)
        return tokenizer
    if config.vision is not None:
        log.warning("%s: no tekken.json beside the vision model; it serves text only", path)
    return Tokenizer.from_hf_dir(path, extra_eos_token_ids=config_eos)


def _renamed(name: str) -> str:
    for old, new in _VISION_RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _load_mistral_dir(path: str, on_progress: ProgressCallback | None, device: str = "cpu") -> Checkpoint:
    params = _read_json(os.path.join(path, mistral_format.PARAMS_FILE)) or {}
    config = mistral_format.mistral_config(params)
    tokenizer = Tokenizer.from_mistral_file(mistral_format.tokenizer_file(path))
    if config.vision is not None:
        mistral_format.check_image_tokenizer(tokenizer, config.vision, path)
    if tokenizer.vocab_size != config.vocab_size:
        raise ModelLoadError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, params.json says vocab_size {config.vocab_size}"
        )
    config = dataclasses.replace(
        config, bos_token_id=tokenizer.bos_token_id, eos_token_ids=sorted(tokenizer.eos_token_ids)
    )
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in _read_safetensors(mistral_format.consolidated_files(path), path, on_progress, device):
        tensors.update(mistral_format.hf_tensors(name, tensor, config))
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    check_tensors(tensors, config, path, mistral_format.native_name)
    return Checkpoint(config, tensors, tokenizer, os.path.basename(os.path.normpath(path)))


def check_tensors(
    tensors: dict[str, torch.Tensor], config: ModelConfig, path: str, file_name: Callable[[str], str] = str
) -> None:
    """Every tensor `config` needs is there with its shape; the error names the first
    that is not (by its name in the files), at start-up rather than as a shape error
    deep in the first request."""
    shapes = _expected_shapes(config)
    if config.vision is not None:
        shapes |= expected_vision_shapes(config.vision)
    for name in sorted(shapes, key=_natural_order):
        if name not in tensors:
            raise ModelLoadError(f"{path}: tensor {file_name(name)!r} is missing")
        if tuple(tensors[name].shape) != shapes[name]:
            shape = tuple(tensors[name].shape)
            raise ModelLoadError(
                f"{path}: tensor {file_name(name)!r} has shape {shape}, the model's config implies {shapes[name]}"
            )


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, ffn, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    dense = {"gate_proj": (ffn, h), "up_proj": (ffn, h), "down_proj": (h, ffn)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
        shapes |= {p + f"self_attn.{n}_proj.weight": s for n, s in (("q", (q, h)), ("k", (kv, h)), ("v", (kv, h)))}
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        if config.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)}
        if config.sandwich_norms:
            shapes |= {p + "pre_feedforward_layernorm.weight": (h,), p + "post_feedforward_layernorm.weight": (h,)}
        if not config.is_moe:
            shapes |= {p + f"mlp.{n}.weight": s for n, s in dense.items()}
            continue
        shapes[p + "block_sparse_moe.gate.weight"] = (config.num_local_experts, h)
        for e in range(config.num_local_experts):
            expert = f"{p}block_sparse_moe.experts.{e}."
            shapes |= {expert + "w1.weight": (ffn, h), expert + "w3.weight": (ffn, h), expert + "w2.weight": (h, ffn)}
    return shapes


def _natural_order(name: str) -> list[tuple[int, str]]:
    """layers.2 before layers.10, so the error names the first missing layer."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in name.split(".")]


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e


def _id_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either config style: transformers 5's
    rope_parameters or the older rope_theta + rope_scaling."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "yarn":  # transformers' defaults: the original context is the configured one
        original = params.get("original_max_position_embeddings") or raw["max_position_embeddings"]
        params["original_max_position_embeddings"] = int(original)
        if params.get("factor") is None:
            params["factor"] = raw["max_position_embeddings"] / params["original_max_position_embeddings"]
    return theta, (None if kind == "default" else {"rope_type": kind, **params})


def _model_config(raw: dict[str, Any]) -> ModelConfig:
    """The architecture from config.json; eos ids are filled in with the tokenizer's."""
    model_type = raw.get("model_type")
    if model_type in _VISION_MODEL_TYPES:
        text = _model_config(raw.get("text_config") or {})
        # The outer config's tying, where it has one, is the one transformers applies.
        tied = bool(raw.get("tie_word_embeddings", text.tie_word_embeddings))
        return dataclasses.replace(text, vision=_vision_config(raw, text.hidden_size), tie_word_embeddings=tied)
    if model_type not in _SUPPORTED_MODEL_TYPES:
        supported = ", ".join(_SUPPORTED_MODEL_TYPES + _VISION_MODEL_TYPES)
        raise ModelLoadError(f"unsupported model_type {model_type!r}; supported: {supported}")
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise ModelLoadError("checkpoints with attention or MLP biases are not supported")
    moe = model_type in _MOE_MODEL_TYPES
    if model_type == "qwen3_moe" and (raw.get("mlp_only_layers") or int(raw.get("decoder_sparse_step", 1)) != 1):
        raise ModelLoadError("Qwen3-MoE checkpoints with dense layers among the sparse ones are not supported")
    if model_type == "gemma3_text":
        return _gemma3_config(raw)
    try:
        hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        theta, scaling = _rope(raw)
        # Qwen's configs carry a sliding_window that only applies with use_sliding_window.
        window = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
        ffn = raw["moe_intermediate_size"] if model_type == "qwen3_moe" else raw["intermediate_size"]
        return ModelConfig(
            architecture=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(ffn),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            sliding_window=window or None,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            num_local_experts=int(raw.get("num_local_experts") or raw.get("num_experts") or 0) if moe else 0,
            num_experts_per_tok=int(raw.get("num_experts_per_tok", 2)),
            norm_topk_prob=bool(raw.get("norm_topk_prob", True)),
            qk_norm=model_type.startswith("qwen3"),
            bos_token_id=raw.get("bos_token_id"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json is missing or has a bad value: {e!r}") from e


def _gemma3_config(raw: dict[str, Any]) -> ModelConfig:
    """Gemma 3's text model: the Llama shape with per-head Q/K norms, norms around
    attention and the MLP, GELU, scaled embeddings and queries, and sliding layers
    (each with an unscaled rotary base of its own) among full ones."""
    if raw.get("final_logit_softcapping") or raw.get("attn_logit_softcapping"):
        raise ModelLoadError("Gemma checkpoints with logit soft-capping are not supported")
    if raw.get("use_bidirectional_attention"):
        raise ModelLoadError("Gemma checkpoints with bidirectional attention are not supported")
    try:
        layers, hidden = int(raw["num_hidden_layers"]), int(raw["hidden_size"])
        params = raw.get("rope_parameters") or {}
        if "full_attention" in params:  # transformers 5: one rotary per layer type
            theta, scaling = _rope({"rope_parameters": params["full_attention"]})
            local_theta = float((params.get("sliding_attention") or {}).get("rope_theta", 10000.0))
        else:
            theta, scaling = _rope(raw)
            local_theta = float(raw.get("rope_local_base_freq", 10000.0))
        pattern = int(raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern") or 6)
        types = raw.get("layer_types") or [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)
        ]
        if len(types) != layers or not set(types) <= {"full_attention", "sliding_attention"}:
            raise ValueError(f"layer_types {types!r}")
        heads = int(raw["num_attention_heads"])
        head_dim = int(raw.get("head_dim") or hidden // heads)
        return ModelConfig(
            architecture="gemma3_text",
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 131072)),
            sliding_window=int(raw["sliding_window"]) if raw.get("sliding_window") else None,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
            qk_norm=True,
            layer_types=list(types),
            rope_local_theta=local_theta,
            attention_scale=float(raw.get("query_pre_attn_scalar") or head_dim) ** -0.5,
            embedding_scale=hidden**0.5,
            hidden_act=str(raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"),
            sandwich_norms=True,
            bos_token_id=raw.get("bos_token_id"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json is missing or has a bad value: {e!r}") from e


def _vision_config(raw: dict[str, Any], text_hidden: int) -> VisionConfig:
    """A Llava (Pixtral) or Mistral3 config.json's vision tower and projector."""
    vision = raw.get("vision_config") or {}
    if vision.get("model_type", "pixtral") != "pixtral":
        raise ModelLoadError(f"vision encoder {vision.get('model_type')!r} is not supported; supported: pixtral")
    layer = raw.get("vision_feature_layer", -1)
    if not isinstance(layer, int) or raw.get("vision_feature_select_strategy", "full") != "full":
        raise ModelLoadError("only one vision feature layer, with every patch selected, is supported")
    mistral3 = raw.get("model_type") == "mistral3"
    try:
        hidden, heads = int(vision["hidden_size"]), int(vision["num_attention_heads"])
        theta, _ = _rope(vision)
        return VisionConfig(
            hidden_size=hidden,
            intermediate_size=int(vision["intermediate_size"]),
            num_hidden_layers=int(vision["num_hidden_layers"]),
            num_attention_heads=heads,
            head_dim=int(vision.get("head_dim") or hidden // heads),
            patch_size=int(vision["patch_size"]),
            text_hidden_size=text_hidden,
            rope_theta=theta,
            num_channels=int(vision.get("num_channels", 3)),
            hidden_act=str(vision.get("hidden_act", "gelu")),
            spatial_merge_size=int(raw.get("spatial_merge_size", 2)) if mistral3 else 1,
            pre_projector_norm=mistral3,
            norm_eps=float((raw.get("text_config") or {}).get("rms_norm_eps", 1e-5)) if mistral3 else 1e-5,
            projector_bias=bool(raw.get("multimodal_projector_bias", not mistral3)),
            projector_act=str(raw.get("projector_hidden_act", "gelu")),
            feature_layer=layer,
            image_token_id=int(raw.get("image_token_id", raw.get("image_token_index", 10))),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json's vision_config is missing or has a bad value: {e!r}") from e


def _safetensors_files(path: str) -> list[str]:
    index = _read_json(os.path.join(path, "model.safetensors.index.json"))
    if index is not None:
        return [os.path.join(path, f) for f in sorted(set(index.get("weight_map", {}).values()))]
    # consolidated*.safetensors are Mistral's layout of the same weights.
    files = sorted(f for f in glob.glob(os.path.join(path, "*.safetensors")) if not _is_consolidated(f))
    if not files:
        raise ModelLoadError(f"{path} has no .safetensors weights (other formats are not supported)")
    return files


def _is_consolidated(file: str) -> bool:
    return os.path.basename(file).startswith("consolidated")


def _read_safetensors(
    files: list[str], path: str, on_progress: ProgressCallback | None, device: str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    # safe_open maps each file and materializes one tensor at a time, so peak
    # memory is the loaded weights plus a single tensor.
    try:
        handles = [safe_open(f, framework="pt", device=device) for f in files]
    except Exception as e:  # safetensors raises its own error type besides OSError
        raise ModelLoadError(f"cannot open the safetensors files in {path}: {e}") from e
    total = sum(len(h.keys()) for h in handles)
    done = 0
    if on_progress:
        on_progress(0, total)
    for handle in handles:
        for name in handle.keys():
            yield name, handle.get_tensor(name)
            done += 1
            if on_progress:
                on_progress(done, total)


def _hf_tensors(name: str, tensor: torch.Tensor, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors `name` stands for in our naming; newer transformers' fused
    Mixtral experts (mlp.experts.gate_up_proj / down_proj) are split per expert."""
    if config.architecture == "gemma3_text" and name.endswith("norm.weight"):
        # Gemma's RMSNorm scales by (1 + weight): stored here as the plain scale.
        tensor = tensor.float() + 1.0
    if name in _GLOBAL_NAMES or (config.vision is not None and name.startswith(_VISION_PREFIXES)):
        yield name, tensor
        return
    if _IGNORED.fullmatch(name):
        return
    match = _LAYER_TENSOR.fullmatch(name)
    local = match[2] if match else ""
    if config.is_moe and local == "mlp.gate.weight":
        yield f"model.layers.{match[1]}.block_sparse_moe.gate.weight", tensor
    elif config.is_moe and local in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
        yield from _split_fused_experts(f"model.layers.{match[1]}.block_sparse_moe.experts", local, tensor, config)
    elif config.is_moe and (expert := _QWEN_EXPERT_NAME.fullmatch(local)):
        yield f"model.layers.{match[1]}.block_sparse_moe.experts.{expert[1]}.{_QWEN_EXPERT_W[expert[2]]}.weight", tensor
    elif local in _LAYER_NAMES or _EXPERT_NAME.fullmatch(local):
        yield name, tensor
    else:
        raise ModelLoadError(f"unexpected tensor {name!r} in checkpoint")


def _split_fused_experts(
    prefix: str, local: str, tensor: torch.Tensor, config: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    ffn, hidden = config.intermediate_size, config.hidden_size
    if local.endswith("gate_up_proj"):
        fused = _expert_major(tensor, 2 * ffn, hidden, local)  # gate rows, then up rows
        for e in range(fused.shape[0]):
            yield f"{prefix}.{e}.w1.weight", fused[e, :ffn]
            yield f"{prefix}.{e}.w3.weight", fused[e, ffn:]
    else:
        down = _expert_major(tensor, hidden, ffn, local)
        for e in range(down.shape[0]):
            yield f"{prefix}.{e}.w2.weight", down[e]


def _expert_major(tensor: torch.Tensor, rows: int, cols: int, name: str) -> torch.Tensor:
    """`tensor` as [experts, rows, cols] (each expert a Linear weight); some
    writers store the last two dimensions the other way round."""
    if tensor.dim() == 3 and tensor.shape[1:] == (rows, cols):
        return tensor
    if tensor.dim() == 3 and tensor.shape[1:] == (cols, rows):
        return tensor.transpose(1, 2).contiguous()
    raise ModelLoadError(f"fused expert tensor {name} has shape {tuple(tensor.shape)}, expected [E, {rows}, {cols}]")
