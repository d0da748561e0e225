"""Sentence embeddings: a BERT encoder plus sentence-transformers pooling.

Loads a sentence-transformers folder (config.json, model.safetensors,
tokenizer.json, modules.json, 1_Pooling/config.json, sentence_bert_config.json),
e.g. all-MiniLM-L6-v2: mean pooling over real tokens, then L2 normalisation.

Inputs longer than max_seq_len tokens are truncated by default, as
sentence-transformers does; `embed(..., truncate=False)` refuses them instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from .errors import InvalidRequestError, ModelLoadError

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}
_BATCH_SIZE = 32  # texts per forward pass; bounds activation memory for long inputs


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    pad_token_id: int

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError(f"unsupported position_embedding_type {d['position_embedding_type']!r}")
        if d.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise ModelLoadError(f"unsupported hidden_act {d['hidden_act']!r}")
        try:
            return cls(
                vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"],
                num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                intermediate_size=d["intermediate_size"],
                max_position_embeddings=d["max_position_embeddings"],
                type_vocab_size=d.get("type_vocab_size", 2),
                layer_norm_eps=d.get("layer_norm_eps", 1e-12),
                hidden_act=d.get("hidden_act", "gelu"),
                pad_token_id=d.get("pad_token_id", 0),
            )
        except KeyError as exc:
            raise ModelLoadError(f"config.json lacks {exc.args[0]!r}") from exc


class BertLayer(nn.Module):
    """Post-norm transformer block: attention, add & norm, MLP, add & norm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d) for _ in range(4))
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.up = nn.Linear(d, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, d)
        self.mlp_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        x = self.attn_norm(x + self.wo(y.transpose(1, 2).reshape(b, t, d)))
        return self.mlp_norm(x + self.down(self.act(self.up(x))))


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.emb_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states [batch, seq, hidden]; `attention_mask` is True on real tokens."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # Single-segment inputs: token type 0 everywhere.
        x = self.tok_embeddings(input_ids) + self.pos_embeddings(positions) + self.type_embeddings.weight[0]
        x = self.emb_norm(x)
        key_mask = attention_mask[:, None, None, :]  # padding keys are invisible to every query
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


# HF BertModel parameter names -> ours.
_RENAMES = [
    ("embeddings.word_embeddings.", "tok_embeddings."),
    ("embeddings.position_embeddings.", "pos_embeddings."),
    ("embeddings.token_type_embeddings.", "type_embeddings."),
    ("embeddings.LayerNorm.", "emb_norm."),
    ("encoder.layer.", "layers."),
    ("attention.self.query.", "wq."),
    ("attention.self.key.", "wk."),
    ("attention.self.value.", "wv."),
    ("attention.output.dense.", "wo."),
    ("attention.output.LayerNorm.", "attn_norm."),
    ("intermediate.dense.", "up."),
    ("output.dense.", "down."),
    ("output.LayerNorm.", "mlp_norm."),
]


def _convert_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in hf.items():
        name = name.removeprefix("bert.")
        # The pooler feeds BERT's next-sentence head, unused by sentence embeddings.
        if name.startswith("pooler.") or name == "embeddings.position_ids":
            continue
        for old, new in _RENAMES:
            name = name.replace(old, new)
        out[name] = tensor
    return out


def _read_json(path: str) -> dict | list | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _pooling_and_normalize(path: str) -> tuple[str, bool]:
    """Pooling mode and L2 normalisation from the sentence-transformers module list.

    A plain BERT folder (no modules.json) gets mean pooling plus normalisation,
    the usual choice for embedding APIs.
    """
    modules = _read_json(os.path.join(path, "modules.json"))
    if modules is None:
        return "mean", True
    types = {m.get("type", "").rsplit(".", 1)[-1]: m.get("path", "") for m in modules if isinstance(m, dict)}
    pooling = _read_json(os.path.join(path, types.get("Pooling", "1_Pooling"), "config.json")) or {}
    modes = [mode for key, mode in _POOLING_MODES.items() if pooling.get(key)]
    other = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v and k not in _POOLING_MODES]
    if other or len(modes) > 1:
        raise ModelLoadError(f"unsupported pooling configuration in {path}: {pooling}")
    return (modes[0] if modes else "mean"), "Normalize" in types


class EmbeddingModel:
    def __init__(
        self,
        encoder: BertEncoder,
        tokenizer: Tokenizer,
        *,
        name: str,
        dim: int,
        max_seq_len: int,
        pooling: str,
        normalize: bool,
        pad_token_id: int,
    ):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.name = name
        self.dim = dim
        self.max_seq_len = max_seq_len
        self.pooling = pooling
        self.normalize = normalize
        self._pad_id = pad_token_id
        self._device = next(encoder.parameters()).device

    @classmethod
    def from_path(cls, path: str, name: str | None = None, device: str = "cpu") -> EmbeddingModel:
        """Loads a sentence-transformers folder; `name` defaults to the folder's name."""
        if not os.path.isdir(path):
            raise ModelLoadError(f"embedding model folder {path!r} does not exist")
        config = _read_json(os.path.join(path, "config.json"))
        if not isinstance(config, dict):
            raise ModelLoadError(f"{path} has no config.json")
        if config.get("model_type", "bert") != "bert":
            raise ModelLoadError(f"unsupported embedding architecture {config.get('model_type')!r}")
        cfg = BertConfig.from_dict(config)
        pooling, normalize = _pooling_and_normalize(path)
        st_config = _read_json(os.path.join(path, "sentence_bert_config.json")) or {}
        max_seq_len = min(st_config.get("max_seq_length") or cfg.max_position_embeddings, cfg.max_position_embeddings)

        encoder = BertEncoder(cfg)
        try:
            weights = load_file(os.path.join(path, "model.safetensors"))
            encoder.load_state_dict(_convert_state_dict(weights), strict=True)
            tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        except Exception as exc:  # safetensors, tokenizers and torch each raise their own types
            raise ModelLoadError(f"cannot load embedding model from {path}: {exc}") from exc
        # tokenizer.json may carry training-time settings (fixed padding to 128, etc.).
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_seq_len)
        encoder.to(device).eval()
        return cls(
            encoder,
            tokenizer,
            name=name or os.path.basename(os.path.normpath(path)),
            dim=cfg.hidden_size,
            max_seq_len=max_seq_len,
            pooling=pooling,
            normalize=normalize,
            pad_token_id=cfg.pad_token_id,
        )

    @torch.inference_mode()
    def embed(self, texts: list[str], truncate: bool = True) -> tuple[torch.Tensor, list[int]]:
        """Float32 embeddings [len(texts), dim] (on CPU) and each text's token count.

        Token counts include the [CLS]/[SEP] markers and are taken after truncation.
        """
        encodings = self.tokenizer.encode_batch(texts)
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    raise InvalidRequestError(
                        f"input {i} is longer than the model's {self.max_seq_len} tokens", param="input"
                    )
        counts = [len(enc.ids) for enc in encodings]
        out = torch.empty(len(texts), self.dim)
        # Sorting by length keeps each batch's padding small.
        order = sorted(range(len(texts)), key=counts.__getitem__)
        for start in range(0, len(order), _BATCH_SIZE):
            rows = order[start : start + _BATCH_SIZE]
            out[rows] = self._embed_batch([encodings[r].ids for r in rows]).cpu()
        return out, counts

    def _embed_batch(self, batch: list[list[int]]) -> torch.Tensor:
        lengths = torch.tensor([len(ids) for ids in batch])
        input_ids = torch.full((len(batch), int(lengths.max())), self._pad_id, dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
        mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        hidden = self.encoder(input_ids, mask)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
        else:
            weights = mask[..., None].to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
