"""The quantized linear layers: int8 (fbgemm's dynamic int8 matmul) against f32,
its round trip through a prepared file, and the precision "auto" stands for."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from tramontane.engine import EngineConfig, ModelLoadError
from tramontane.engine.attention import build_metadata
from tramontane.engine.layers import Linear
from tramontane.engine.prepared import _AllowListPickle
from tramontane.engine.runner import resolve_precision

# 7-bit activations and 8-bit weights: on Gaussian data the output is off by ~2%
# of its norm (per-row relative Frobenius error).
INT8_RTOL = 0.03


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    return (got - want).norm(dim=-1) / want.norm(dim=-1)


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    # The shape of SmolLM2-135M's fused q/k/v projection.
    return torch.randn(960, 576, generator=torch.Generator().manual_seed(0)) * 0.05


@pytest.mark.parametrize("rows", [1, 16, 128])
def test_int8_linear_tracks_float32(weight, rows):
    x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(rows))
    got = Linear(weight, "int8")(x)
    assert got.shape == (rows, 960) and got.dtype == torch.float32
    assert _relative_error(got, F.linear(x, weight)).max() < INT8_RTOL


def test_int8_row_precision_does_not_depend_on_its_batch(weight):
    # fbgemm quantizes a whole input with one scale: a row 1000x larger than the
    # others would leave them a handful of levels if rows were not scaled apart.
    x = torch.randn(16, 576, generator=torch.Generator().manual_seed(1))
    x[0] *= 1000
    assert _relative_error(Linear(weight, "int8")(x), F.linear(x, weight)).max() < INT8_RTOL


def test_int8_linear_keeps_leading_dims_and_model_dtype(weight):
    x = torch.randn(2, 3, 576, dtype=torch.bfloat16)
    assert Linear(weight, "int8")(x).shape == (2, 3, 960)
    assert Linear(weight, "int8")(x).dtype == torch.bfloat16


def test_int8_linear_survives_the_prepared_unpickler(weight):
    # The fbgemm packing does not pickle: the file holds int8 rows and scales,
    # read back by the prepared models' allow-list unpickler and packed again.
    linear = Linear(weight, "int8")
    buffer = io.BytesIO()
    torch.save(linear, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False, pickle_module=_AllowListPickle)
    x = torch.randn(4, 576)
    assert torch.equal(loaded(x), linear(x))
    assert not hasattr(linear, "int8_rows")  # saving left the live module alone


def test_auto_precision_on_cpu_is_int4_in_float32():
    assert resolve_precision(EngineConfig(), torch.device("cpu")) == ("int4", torch.float32)
    with pytest.raises(ModelLoadError, match="CPU kernels"):
        resolve_precision(EngineConfig(quantization="int8"), torch.device("cuda"))


def test_int8_model_mostly_agrees_with_float32_on_next_tokens(make_engine):
    # Rounding activations moves logits by a few percent: near ties flip, so greedy
    # decoding leaves the f32 path within a few tokens (why "auto" stays int4, which
    # reproduces the default GGUF's 4-bit groups exactly: 45 of these 46 choices),
    # but most next-token choices along a text stay those of f32 (39 of 46).
    text = (
        "The capital of France is Paris. It lies on the Seine, and its museums, the Louvre first "
        "among them, draw millions of visitors every year. def fibonacci(n): return n if n < 2 else"
    )
    choices = {}
    for quant in ("none", "int8"):
        engine = make_engine(quantization=quant)
        ids = engine.tokenizer.encode(text)
        n = len(ids)
        meta = build_metadata([list(range(n))], [list(range(8))], engine.config.block_size, None, torch.device("cpu"))
        logits = engine.runner.model(torch.tensor([ids]), torch.arange(n)[None], meta, torch.arange(n))
        choices[quant] = logits.argmax(-1)
    agreement = (choices["int8"] == choices["none"]).float().mean().item()
    assert agreement >= 0.8
