"""Pixtral's vision encoder and the projector into the language model (Pixtral,
Mistral Small 3.x), written like the papers.

An image of H x W pixels is cut into (H/p) x (W/p) patches of p x p pixels, each
embedded by one linear map (a convolution with stride p) and normalised. A
transformer then runs over the patches of that image alone, with a 2D rotary
embedding: half of each head's frequencies turn with the patch's row, the other
half with its column, so that images of any shape need no position table. Where
the model has one (Mistral Small 3.x), a patch merger folds each s x s square of
patches into one vector. The projector (linear, GELU, linear) maps the result to
the language model's width: one embedding per [IMG] token of the prompt.

Tensor names are ours, close to HF's: `vision_tower.*` (Pixtral's), and
`multi_modal_projector.{norm,patch_merger.merging_layer,linear_1,linear_2}.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .layers import RMSNorm, apply_rope

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def expected_vision_shapes(cfg: VisionConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the encoder and projector, with its shape."""
    h, ffn, q = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "vision_tower.patch_conv.weight": (h, cfg.num_channels, cfg.patch_size, cfg.patch_size),
        "vision_tower.ln_pre.weight": (h,),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"vision_tower.transformer.layers.{i}."
        shapes |= {p + "attention_norm.weight": (h,), p + "ffn_norm.weight": (h,)}
        shapes |= {p + f"attention.{n}_proj.weight": (q, h) for n in "qkv"}
        shapes[p + "attention.o_proj.weight"] = (h, q)
        shapes |= {p + "feed_forward.gate_proj.weight": (ffn, h), p + "feed_forward.up_proj.weight": (ffn, h)}
        shapes[p + "feed_forward.down_proj.weight"] = (h, ffn)
    p = "multi_modal_projector."
    if cfg.pre_projector_norm:
        shapes[p + "norm.weight"] = (h,)
    if cfg.spatial_merge_size > 1:
        shapes[p + "patch_merger.merging_layer.weight"] = (h, h * cfg.spatial_merge_size**2)
    t = cfg.text_hidden_size
    shapes |= {p + "linear_1.weight": (t, h), p + "linear_2.weight": (t, t)}
    if cfg.projector_bias:
        shapes |= {p + "linear_1.bias": (t,), p + "linear_2.bias": (t,)}
    return shapes


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(weight.float().contiguous(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.float().contiguous(), requires_grad=False)
    return layer


def _norm(weight: torch.Tensor, eps: float) -> RMSNorm:
    norm = RMSNorm(weight.shape[0], eps)
    norm.weight.copy_(weight.float())
    return norm


class VisionBlock(nn.Module):
    """Pre-norm attention over one image's patches, then a gated MLP."""

    def __init__(self, cfg: VisionConfig, w: dict[str, torch.Tensor]):
        super().__init__()
        self.n_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.act = cfg.hidden_act
        self.attention_norm = _norm(w["attention_norm.weight"], cfg.norm_eps)
        self.qkv = _linear(torch.cat([w[f"attention.{n}_proj.weight"] for n in "qkv"]))
        self.o_proj = _linear(w["attention.o_proj.weight"])
        self.ffn_norm = _norm(w["ffn_norm.weight"], cfg.norm_eps)
        self.gate_up = _linear(torch.cat([w["feed_forward.gate_proj.weight"], w["feed_forward.up_proj.weight"]]))
        self.down = _linear(w["feed_forward.down_proj.weight"])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(self.attention_norm(x)).view(n, 3, self.n_heads, self.head_dim).unbind(1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Every patch sees every other patch of its image: no mask.
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
        x = x + self.o_proj(out.transpose(0, 1).reshape(n, -1))
        gate, up = self.gate_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.down(_ACTIVATIONS[self.act](gate) * up)


class VisionEncoder(nn.Module):
    """Pixels of one image [C, H, W] -> one vector per patch [H/p * W/p, hidden]."""

    def __init__(self, cfg: VisionConfig, w: dict[str, torch.Tensor]):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.patch_embed = _linear(w["patch_conv.weight"].flatten(1))
        self.ln_pre = _norm(w["ln_pre.weight"], cfg.norm_eps)
        self.layers = nn.ModuleList(
            VisionBlock(cfg, {k.split(".", 3)[3]: v for k, v in w.items() if k.startswith(f"transformer.layers.{i}.")})
            for i in range(cfg.layers_used)
        )
        # Frequencies of the 2D rotary embedding: the even ones turn with the row,
        # the odd ones with the column (Pixtral's split of one 1D spectrum).
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
        self.register_buffer("row_freq", inv_freq[0::2].float(), persistent=False)
        self.register_buffer("col_freq", inv_freq[1::2].float(), persistent=False)

    def rope(self, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [rows * cols, 1, head_dim] in apply_rope's layout."""
        r = torch.arange(rows, dtype=torch.float32)[:, None, None] * self.row_freq
        c = torch.arange(cols, dtype=torch.float32)[None, :, None] * self.col_freq
        angles = torch.cat([r.expand(rows, cols, -1), c.expand(rows, cols, -1)], dim=-1).flatten(0, 1)
        angles = torch.cat([angles, angles], dim=-1)[:, None, :]
        half = angles.shape[-1] // 2
        sign = torch.cat([-torch.ones(half), torch.ones(half)])
        return angles.cos(), angles.sin() * sign

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        channels, height, width = pixels.shape
        p = self.patch_size
        rows, cols = height // p, width // p
        # [C, rows*p, cols*p] -> one flattened C x p x p patch per row, in row-major order.
        patches = pixels[:, : rows * p, : cols * p].reshape(channels, rows, p, cols, p)
        patches = patches.permute(1, 3, 0, 2, 4).reshape(rows * cols, channels * p * p)
        x = self.ln_pre(self.patch_embed(patches.to(self.patch_embed.weight.dtype)))
        cos, sin = self.rope(rows, cols)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


class PatchMerger(nn.Module):
    """Each s x s square of patches -> one vector (Mistral Small 3.x)."""

    def __init__(self, weight: torch.Tensor, merge: int):
        super().__init__()
        self.merge = merge
        self.merging_layer = _linear(weight)

    def forward(self, x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        s, d = self.merge, x.shape[-1]
        grid = x.view(rows, cols, d).permute(2, 0, 1).unsqueeze(0)
        # unfold lists each square's values channel-major, then by position in the square.
        squares = F.unfold(grid, kernel_size=s, stride=s).view(d * s * s, -1).t()
        return self.merging_layer(squares)


class VisionModel(nn.Module):
    """Pixels of one image -> its [IMG] tokens' embeddings in the language model."""

    def __init__(self, cfg: VisionConfig, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.config = cfg
        tower = "vision_tower."
        self.encoder = VisionEncoder(cfg, {k[len(tower) :]: v for k, v in tensors.items() if k.startswith(tower)})
        p = "multi_modal_projector."
        self.norm = _norm(tensors[p + "norm.weight"], cfg.norm_eps) if cfg.pre_projector_norm else None
        self.merger = (
            PatchMerger(tensors[p + "patch_merger.merging_layer.weight"], cfg.spatial_merge_size)
            if cfg.spatial_merge_size > 1
            else None
        )
        bias = cfg.projector_bias
        self.linear_1 = _linear(tensors[p + "linear_1.weight"], tensors[p + "linear_1.bias"] if bias else None)
        self.linear_2 = _linear(tensors[p + "linear_2.weight"], tensors[p + "linear_2.bias"] if bias else None)
        self.act = cfg.projector_act

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[C, H, W] (H and W multiples of the patch size times the merge size) ->
        [H/(p*s) * W/(p*s), text hidden], in the row-major order of the [IMG] tokens."""
        x = self.encoder(pixels)
        if self.norm is not None:
            x = self.norm(x)
        if self.merger is not None:
            p = self.config.patch_size
            x = self.merger(x, pixels.shape[1] // p, pixels.shape[2] // p)
        return self.linear_2(_ACTIVATIONS[self.act](self.linear_1(x)))
