"""Mistral's native checkpoint layout, as Mistral publishes its models.

A folder holds `params.json` (the architecture, in Mistral's own keys),
`consolidated.safetensors` or `consolidated-0000N-of-0000M.safetensors`, and a
mistral-common tokenizer: `tekken.json` or `tokenizer.model.v*`.

Tensor names differ from HF's (`layers.N.attention.wq.weight`, `feed_forward.w1`,
`tok_embeddings`, `output`), and so does the rotary layout: Mistral's code rotates
adjacent pairs of each head's dimensions (x[2i], x[2i+1]), HF's rotates the two
halves (x[i], x[i + d/2]). Loading permutes the rows of wq and wk from the first
to the second, which makes the attention scores, and so the logits, identical.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from tramontane.engine.config import ModelConfig, VisionConfig
from tramontane.engine.errors import ModelLoadError

if TYPE_CHECKING:
    from tramontane.engine.tokenizer import Tokenizer

PARAMS_FILE = "params.json"
# Tokenizer files in the order of preference when a folder ships several.
_TEKKEN = "tekken.json"
_SENTENCEPIECE = re.compile(r"tokenizer(\.mm)?\.model(\.v(\d+)(m\d+)?)?")

_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_GLOBALS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    # w1 gates, w3 is the up projection, w2 projects back down (as in HF's Mixtral).
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
_MOE_GATE = "feed_forward.gate.weight"
_MOE_EXPERT = re.compile(r"feed_forward\.experts\.(\d+)\.(w[123])\.weight")
# The vision encoder's and projector's tensors: Mistral's name -> ours (engine/vision.py).
_VISION_GLOBALS = {
    "vision_encoder.patch_conv.weight": "vision_tower.patch_conv.weight",
    "vision_encoder.ln_pre.weight": "vision_tower.ln_pre.weight",
    "vision_language_adapter.w_in.weight": "multi_modal_projector.linear_1.weight",
    "vision_language_adapter.w_in.bias": "multi_modal_projector.linear_1.bias",
    "vision_language_adapter.w_out.weight": "multi_modal_projector.linear_2.weight",
    "vision_language_adapter.w_out.bias": "multi_modal_projector.linear_2.bias",
    "pre_mm_projector_norm.weight": "multi_modal_projector.norm.weight",
    "patch_merger.merging_layer.weight": "multi_modal_projector.patch_merger.merging_layer.weight",
}
_VISION_LAYER = re.compile(r"vision_encoder\.transformer\.layers\.(\d+)\.(.+)")
_VISION_LAYER_NAMES = {
    "attention_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "attention.wq.weight": "attention.q_proj.weight",
    "attention.wk.weight": "attention.k_proj.weight",
    "attention.wv.weight": "attention.v_proj.weight",
    "attention.wo.weight": "attention.o_proj.weight",
    "feed_forward.w1.weight": "feed_forward.gate_proj.weight",
    "feed_forward.w3.weight": "feed_forward.up_proj.weight",
    "feed_forward.w2.weight": "feed_forward.down_proj.weight",
}


def is_mistral_dir(path: str) -> bool:
    """A folder in Mistral's layout: params.json beside consolidated weights."""
    return os.path.isfile(os.path.join(path, PARAMS_FILE)) and bool(consolidated_files(path))


def consolidated_files(path: str) -> list[str]:
    return sorted(glob.glob(os.path.join(path, "consolidated*.safetensors")))


def tokenizer_file(path: str) -> str:
    """The folder's mistral-common tokenizer: tekken.json, else the newest
    tokenizer.model.vN (a plain tokenizer.model is v1)."""
    if os.path.isfile(os.path.join(path, _TEKKEN)):
        return os.path.join(path, _TEKKEN)
    candidates = []
    for name in os.listdir(path):
        if match := _SENTENCEPIECE.fullmatch(name):
            candidates.append((int(match[3] or 1), name))
    if not candidates:
        raise ModelLoadError(
            f"{path} has params.json but no mistral-common tokenizer (tekken.json or tokenizer.model.v*)"
        )
    return os.path.join(path, max(candidates)[1])


def _yarn(yarn: dict[str, Any]) -> dict[str, Any]:
    """params.json's `yarn` section in transformers' terms: Mistral's `beta` and `alpha`
    are the fast and slow rotation bounds; its models apply no attention factor
    (mscale = mscale_all_dim = 1, as transformers' Ministral 3 configuration has it)."""
    unknown = set(yarn) - {"factor", "original_max_position_embeddings", "beta", "alpha", "apply_scale"}
    if unknown:
        raise ModelLoadError(f"params.json's yarn section has keys this engine does not know: {sorted(unknown)}")
    if yarn.get("apply_scale"):  # an attention scale whose exact form no reference here pins down
        raise ModelLoadError("params.json's yarn apply_scale is not supported yet")
    return {
        "rope_type": "yarn",
        "factor": float(yarn["factor"]),
        "original_max_position_embeddings": int(yarn["original_max_position_embeddings"]),
        "beta_fast": float(yarn.get("beta", 32)),
        "beta_slow": float(yarn.get("alpha", 1)),
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }


def mistral_config(params: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from params.json; token ids are filled in from the tokenizer."""
    if params.get("rope_scaling") or params.get("llama_4_scaling"):
        kind = "rope_scaling" if params.get("rope_scaling") else "llama_4_scaling"
        raise ModelLoadError(f"params.json's {kind} is not supported yet")
    vision = params.get("vision_encoder")
    try:
        hidden, heads = int(params["dim"]), int(params["n_heads"])
        moe = params.get("moe") or {}
        sliding_window = params.get("sliding_window")
        if isinstance(sliding_window, list):  # one window per layer: only a uniform one is supported
            if len(set(sliding_window)) != 1:
                raise ModelLoadError("per-layer sliding windows in params.json are not supported")
            sliding_window = sliding_window[0]
        return ModelConfig(
            architecture="mixtral" if moe else "mistral",
            vocab_size=int(params["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(params["hidden_dim"]),
            num_hidden_layers=int(params["n_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(params.get("n_kv_heads") or heads),
            head_dim=int(params.get("head_dim") or hidden // heads),
            rms_norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta") or 10000.0),
            rope_scaling=_yarn(params["yarn"]) if params.get("yarn") else None,
            # Mistral's code has no position limit of its own; the engine caps the
            # context at what its KV cache holds in any case.
            max_position_embeddings=int(params.get("max_position_embeddings") or params.get("max_seq_len") or 32768),
            sliding_window=int(sliding_window) if sliding_window else None,
            tie_word_embeddings=bool(params.get("tied_embeddings", False)),
            num_local_experts=int(moe.get("num_experts", 0)),
            num_experts_per_tok=int(moe.get("num_experts_per_tok", 2)),
            vision=_vision_config(vision, hidden) if vision else None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"params.json is missing or has a bad value: {e!r}") from e


def _vision_config(vision: dict[str, Any], text_hidden: int) -> VisionConfig:
    """params.json's `vision_encoder` section (mistral-inference's VisionEncoderArgs)."""
    projector = vision.get("mm_projector_id") or ""
    if projector not in ("", "patch_merge"):
        raise ModelLoadError(f"vision projector {projector!r} is not supported; supported: patch_merge")
    hidden, heads = int(vision["hidden_size"]), int(vision["num_attention_heads"])
    return VisionConfig(
        hidden_size=hidden,
        intermediate_size=int(vision["intermediate_size"]),
        num_hidden_layers=int(vision["num_hidden_layers"]),
        num_attention_heads=heads,
        head_dim=hidden // heads,
        patch_size=int(vision["patch_size"]),
        text_hidden_size=text_hidden,
        rope_theta=float(vision.get("rope_theta", 10000.0)),
        num_channels=int(vision.get("num_channels", 3)),
        spatial_merge_size=int(vision.get("spatial_merge_size", 1)) if projector == "patch_merge" else 1,
        pre_projector_norm=bool(vision.get("add_pre_mm_projector_layer_norm", False)),
        projector_bias=bool(vision.get("adapter_bias", True)),
        image_token_id=int(vision.get("image_token_id", 10)),
    )


def check_image_tokenizer(tokenizer: Tokenizer, vision: VisionConfig, path: str) -> None:
    """The tokenizer lays out images as the encoder reads them: same [IMG] token, patch
    size and merge size (mistral-common's image config against the model's)."""
    image = tokenizer.mistral.image_layout if tokenizer.mistral is not None else None
    if image is None:
        raise ModelLoadError(f"{path}: the model has a vision encoder but its tokenizer has no image config")
    ours = (vision.image_token_id, vision.patch_size, vision.spatial_merge_size)
    theirs = (image.token_id, image.patch_size, image.spatial_merge_size)
    if ours != theirs:
        raise ModelLoadError(
            f"{path}: the tokenizer lays out images as ([IMG] id, patch size, merge size) {theirs}, "
            f"the vision encoder reads {ours}"
        )


def hf_tensors(name: str, tensor: torch.Tensor, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """The HF-named tensor(s) Mistral's `name` stands for; vision sections yield nothing."""
    if name in _GLOBALS:
        yield _GLOBALS[name], tensor
        return
    if config.vision is not None and (name in _VISION_GLOBALS or name.startswith("vision_encoder.")):
        yield _vision_tensor(name, tensor, config.vision)
        return
    match = _LAYER.fullmatch(name)
    if match is None:
        raise ModelLoadError(f"unexpected tensor {name!r} in the Mistral checkpoint")
    layer, local = match[1], match[2]
    prefix = f"model.layers.{layer}."
    if local == "attention.wq.weight":
        yield prefix + "self_attn.q_proj.weight", _pairs_to_halves(tensor, config.num_attention_heads, name)
    elif local == "attention.wk.weight":
        yield prefix + "self_attn.k_proj.weight", _pairs_to_halves(tensor, config.num_key_value_heads, name)
    elif local in _LAYER_NAMES and not (config.is_moe and local.startswith("feed_forward.")):
        yield prefix + _LAYER_NAMES[local], tensor
    elif config.is_moe and local == _MOE_GATE:
        yield prefix + "block_sparse_moe.gate.weight", tensor
    elif config.is_moe and (expert := _MOE_EXPERT.fullmatch(local)):
        yield prefix + f"block_sparse_moe.experts.{expert[1]}.{expert[2]}.weight", tensor
    else:
        raise ModelLoadError(f"unexpected tensor {name!r} in the Mistral checkpoint")


def _vision_tensor(name: str, tensor: torch.Tensor, vision: VisionConfig) -> tuple[str, torch.Tensor]:
    if name in _VISION_GLOBALS:
        return _VISION_GLOBALS[name], tensor
    match = _VISION_LAYER.fullmatch(name)
    if match is None or match[2] not in _VISION_LAYER_NAMES:
        raise ModelLoadError(f"unexpected tensor {name!r} in the Mistral checkpoint")
    ours = f"vision_tower.transformer.layers.{match[1]}.{_VISION_LAYER_NAMES[match[2]]}"
    if match[2] in ("attention.wq.weight", "attention.wk.weight"):
        # The 2D rotary embedding pairs dimensions as the text model's does.
        tensor = _pairs_to_halves(tensor, vision.num_attention_heads, name)
    return ours, tensor


def _pairs_to_halves(weight: torch.Tensor, n_heads: int, name: str) -> torch.Tensor:
    """Rows of a Q/K projection from the rotate-pairs layout to rotate-halves:
    each head's row 2i + j moves to j * head_dim / 2 + i."""
    rows, cols = weight.shape
    if rows % (2 * n_heads):
        raise ModelLoadError(f"{name} has {rows} rows, not a multiple of 2 x {n_heads} heads")
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def halves_to_pairs(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of the load-time permutation (for writing Mistral's layout)."""
    rows, cols = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def native_name(hf_name: str) -> str:
    """Mistral's name for one of our HF-named tensors (for error messages)."""
    for native, hf in (_GLOBALS | _VISION_GLOBALS).items():
        if hf_name == hf:
            return native
    if vision := re.fullmatch(r"vision_tower\.transformer\.layers\.(\d+)\.(.+)", hf_name):
        local = {ours: native for native, ours in _VISION_LAYER_NAMES.items()}.get(vision[2], vision[2])
        return f"vision_encoder.transformer.layers.{vision[1]}.{local}"
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if match is None:
        return hf_name
    layer, local = match[1], match[2]
    if local == "block_sparse_moe.gate.weight":
        return f"layers.{layer}.{_MOE_GATE}"
    if expert := re.fullmatch(r"block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight", local):
        return f"layers.{layer}.feed_forward.experts.{expert[1]}.{expert[2]}.weight"
    for native, hf in _LAYER_NAMES.items():
        if local == hf:
            return f"layers.{layer}.{native}"
    return hf_name
