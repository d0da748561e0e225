"""Tiny random Pixtral (Llava) and Mistral Small 3 (Mistral3) checkpoints, in HF's
layout and in Mistral's own.

Weights come from transformers' reference implementations (random, seeded); the
tokenizer is the tekken file mistral-common ships, whose image config (16-pixel
patches) is Pixtral's. The Mistral3 variant merges 2 x 2 patches, so its tekken
file says so too. Importable from every test folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_mistral import MISTRAL_COMMON_DATA, native_tensors, params_json

from tramontane.engine.mistral_format import halves_to_pairs

VISION_HIDDEN, VISION_HEADS = 32, 2
IMAGE_TOKEN = 10  # [IMG] in tekken_240911


def hf_vision_model(kind: str = "llava", seed: int = 0):
    """A random LlavaForConditionalGeneration (Pixtral tower) or Mistral3ForConditionalGeneration."""
    import transformers

    torch.manual_seed(seed)
    vision = transformers.PixtralVisionConfig(
        hidden_size=VISION_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=VISION_HEADS,
        head_dim=VISION_HIDDEN // VISION_HEADS, image_size=1024, patch_size=16, hidden_act="silu",
    )
    text = transformers.MistralConfig(
        vocab_size=131072, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, rope_theta=1_000_000.0, rms_norm_eps=1e-5,
    )
    if kind == "mistral3":
        config = transformers.Mistral3Config(
            vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, spatial_merge_size=2,
            tie_word_embeddings=False,
        )
        return transformers.Mistral3ForConditionalGeneration(config).eval()
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, projector_hidden_act="gelu",
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    )
    return transformers.LlavaForConditionalGeneration(config).eval()


def write_tekken(folder: Path, merge: int) -> None:
    tekken = json.loads((MISTRAL_COMMON_DATA / "tekken_240911.json").read_text())
    if merge > 1:
        tekken["image"]["spatial_merge_size"] = merge
    (folder / "tekken.json").write_text(json.dumps(tekken))


def write_hf_vision(model, folder: Path) -> Path:
    """`model` as save_pretrained writes it, with the tekken.json Mistral's HF repositories ship."""
    model.save_pretrained(folder)
    write_tekken(folder, getattr(model.config, "spatial_merge_size", 1))
    return folder


def write_native_vision(model, folder: Path) -> Path:
    """`model` as Mistral ships it: params.json with a vision_encoder section,
    consolidated.safetensors with Mistral's names, tekken.json."""
    folder.mkdir(parents=True, exist_ok=True)
    language = _language_model(model)
    tensors = native_tensors(language)
    state = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    tensors |= _native_vision_tensors(state)
    save_file(tensors, str(folder / "consolidated.safetensors"))
    mistral3 = model.config.model_type == "mistral3"
    vision = model.config.vision_config
    params = params_json(language) | {
        "vision_encoder": {
            "hidden_size": vision.hidden_size, "num_channels": 3, "image_size": vision.image_size,
            "patch_size": vision.patch_size, "rope_theta": 10000.0, "intermediate_size": vision.intermediate_size,
            "num_hidden_layers": vision.num_hidden_layers, "num_attention_heads": vision.num_attention_heads,
            "image_token_id": IMAGE_TOKEN, "image_break_token_id": 12, "image_end_token_id": 13,
            "adapter_bias": not mistral3,
            **({"spatial_merge_size": 2, "mm_projector_id": "patch_merge", "add_pre_mm_projector_layer_norm": True}
               if mistral3 else {}),
        }
    }
    (folder / "params.json").write_text(json.dumps(params))
    write_tekken(folder, 2 if mistral3 else 1)
    return folder


class _Language(torch.nn.Module):
    """The text half of a vision model, shaped as tiny_mistral's helpers expect."""

    def __init__(self, model):
        super().__init__()
        self.config = model.config.text_config
        state = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
        self._state = {
            "model." + k.removeprefix("language_model."): v for k, v in state.items() if k.startswith("language_model.")
        }
        self._state["lm_head.weight"] = model.lm_head.weight.detach()

    def state_dict(self, *args, **kwargs):
        return self._state


def _language_model(model) -> _Language:
    return _Language(model)


_NATIVE_VISION_LAYER = {
    "attention.q_proj.weight": "attention.wq.weight",
    "attention.k_proj.weight": "attention.wk.weight",
    "attention.v_proj.weight": "attention.wv.weight",
    "attention.o_proj.weight": "attention.wo.weight",
    "feed_forward.gate_proj.weight": "feed_forward.w1.weight",
    "feed_forward.up_proj.weight": "feed_forward.w3.weight",
    "feed_forward.down_proj.weight": "feed_forward.w2.weight",
    "attention_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
_NATIVE_PROJECTOR = {
    "multi_modal_projector.linear_1.weight": "vision_language_adapter.w_in.weight",
    "multi_modal_projector.linear_1.bias": "vision_language_adapter.w_in.bias",
    "multi_modal_projector.linear_2.weight": "vision_language_adapter.w_out.weight",
    "multi_modal_projector.linear_2.bias": "vision_language_adapter.w_out.bias",
    "multi_modal_projector.norm.weight": "pre_mm_projector_norm.weight",
    "multi_modal_projector.patch_merger.merging_layer.weight": "patch_merger.merging_layer.weight",
}


def _native_vision_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name in _NATIVE_PROJECTOR:
            out[_NATIVE_PROJECTOR[name]] = tensor
        elif name.startswith("vision_tower.transformer.layers."):
            layer, local = name.removeprefix("vision_tower.transformer.layers.").split(".", 1)
            if local in ("attention.q_proj.weight", "attention.k_proj.weight"):
                tensor = halves_to_pairs(tensor, VISION_HEADS)
            out[f"vision_encoder.transformer.layers.{layer}.{_NATIVE_VISION_LAYER[local]}"] = tensor
        elif name.startswith("vision_tower."):
            out["vision_encoder." + name.removeprefix("vision_tower.")] = tensor
    return {k: v.contiguous().clone() for k, v in out.items()}

