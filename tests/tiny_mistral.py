"""Tiny random Mistral/Mixtral checkpoints, in HF's layout and in Mistral's own.

Weights come from transformers' reference implementations (random, seeded); the
native copy renames them to Mistral's tensor names and undoes HF's rotary
permutation, as Mistral ships its models. Tokenizers are the real ones that
mistral-common ships. Importable from every test folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tramontane.engine.mistral_format import halves_to_pairs

MISTRAL_COMMON_DATA = Path(__import__("mistral_common").__file__).parent / "data"
# Tokenizer file in mistral_common/data -> the name a Mistral folder gives it.
TOKENIZERS = {
    "v1": ("tokenizer.model.v1", "tokenizer.model"),
    "v3": ("mistral_instruct_tokenizer_240323.model.v3", "tokenizer.model.v3"),
    "v7": ("mistral_instruct_tokenizer_241114.model.v7", "tokenizer.model.v7"),
    "tekken": ("tekken_240911.json", "tekken.json"),
}
VOCAB = {"v1": 32000, "v3": 32768, "v7": 32768, "tekken": 131072}

_HIDDEN, _FFN, _LAYERS, _HEADS, _KV_HEADS = 64, 128, 2, 4, 2


def hf_model(kind: str = "mistral", tokenizer: str = "v3", seed: int = 0, **config):
    """A random transformers Mistral (or Mixtral, kind="mixtral") of the tokenizer's vocabulary."""
    import transformers

    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB[tokenizer], hidden_size=_HIDDEN, intermediate_size=_FFN, num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS, num_key_value_heads=_KV_HEADS, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, rope_theta=1_000_000.0,
    )
    common.update(config)
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **common)
        return transformers.MixtralForCausalLM(cfg).eval()
    return transformers.MistralForCausalLM(transformers.MistralConfig(**common)).eval()


def native_tensors(model) -> dict[str, torch.Tensor]:
    """The model's weights under Mistral's names and rotary layout."""
    cfg = model.config
    out = {}
    for name, tensor in model.state_dict().items():
        name = name.removeprefix("model.")
        if name == "embed_tokens.weight":
            out["tok_embeddings.weight"] = tensor
            continue
        if name in ("norm.weight",):
            out[name] = tensor
            continue
        if name == "lm_head.weight":
            out["output.weight"] = tensor
            continue
        if not name.startswith("layers.") or name.endswith("rotary_emb.inv_freq"):
            continue
        layer, local = name.split(".", 2)[1:]
        prefix = f"layers.{layer}."
        if local == "self_attn.q_proj.weight":
            out[prefix + "attention.wq.weight"] = halves_to_pairs(tensor, cfg.num_attention_heads)
        elif local == "self_attn.k_proj.weight":
            out[prefix + "attention.wk.weight"] = halves_to_pairs(tensor, cfg.num_key_value_heads)
        elif local.startswith("self_attn."):
            out[prefix + "attention.w" + local.split(".")[1][0] + ".weight"] = tensor
        elif local == "input_layernorm.weight":
            out[prefix + "attention_norm.weight"] = tensor
        elif local == "post_attention_layernorm.weight":
            out[prefix + "ffn_norm.weight"] = tensor
        elif local.startswith("mlp.") and local.split(".")[1] in ("gate_proj", "up_proj", "down_proj"):
            w = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}[local.split(".")[1]]
            out[prefix + f"feed_forward.{w}.weight"] = tensor
        elif local in ("mlp.gate.weight", "block_sparse_moe.gate.weight"):
            out[prefix + "feed_forward.gate.weight"] = tensor
        elif local in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            for e in range(cfg.num_local_experts):
                if local.endswith("gate_up_proj"):
                    gate_up = _expert_rows(tensor[e], 2 * cfg.intermediate_size)
                    out[prefix + f"feed_forward.experts.{e}.w1.weight"] = gate_up[: cfg.intermediate_size]
                    out[prefix + f"feed_forward.experts.{e}.w3.weight"] = gate_up[cfg.intermediate_size :]
                else:
                    out[prefix + f"feed_forward.experts.{e}.w2.weight"] = _expert_rows(tensor[e], cfg.hidden_size)
        elif local.startswith("block_sparse_moe.experts."):
            e, w = local.split(".")[2:4]
            out[prefix + f"feed_forward.experts.{e}.{w}.weight"] = tensor
        else:
            raise AssertionError(f"no Mistral name for {name}")
    return {k: v.contiguous().clone() for k, v in out.items()}


def _expert_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return weight if weight.shape[0] == rows else weight.T


def params_json(model) -> dict:
    cfg = model.config
    params = {
        "dim": cfg.hidden_size,
        "n_layers": cfg.num_hidden_layers,
        "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "hidden_dim": cfg.intermediate_size, "n_heads": cfg.num_attention_heads, "n_kv_heads": cfg.num_key_value_heads,
        "norm_eps": cfg.rms_norm_eps, "vocab_size": cfg.vocab_size, "rope_theta": _rope_theta(cfg),
        "max_seq_len": cfg.max_position_embeddings,
    }
    if getattr(cfg, "sliding_window", None):
        params["sliding_window"] = cfg.sliding_window
    if getattr(cfg, "num_local_experts", 0):
        params["moe"] = {"num_experts": cfg.num_local_experts, "num_experts_per_tok": cfg.num_experts_per_tok}
    return params


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def write_native(model, folder: Path, tokenizer: str = "v3", shards: int = 1) -> Path:
    """`model` as Mistral ships it: params.json, consolidated safetensors, tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = native_tensors(model)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "consolidated.safetensors"))
    else:
        for i in range(shards):
            part = {n: tensors[n] for n in names[i::shards]}
            save_file(part, str(folder / f"consolidated-{i + 1:05d}-of-{shards:05d}.safetensors"))
    (folder / "params.json").write_text(json.dumps(params_json(model)))
    source, target = TOKENIZERS[tokenizer]
    shutil.copy(MISTRAL_COMMON_DATA / source, folder / target)
    return folder


def write_hf(model, folder: Path) -> Path:
    """`model` in HF's layout, with a tokenizer.json of the same vocabulary (v3's)."""
    from tramontane.engine import Tokenizer

    model.save_pretrained(folder)
    tok = Tokenizer.from_mistral_file(os.path.join(MISTRAL_COMMON_DATA, TOKENIZERS["v3"][0]))
    tok.hf_tokenizer.save(str(folder / "tokenizer.json"))
    return folder
