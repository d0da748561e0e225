"""The quantized linear layers against f32 (int8: our Q8_0 kernel, or fbgemm's
dynamic int8 matmul where ours do not run), their round trip through a prepared
file, and the precision "auto" stands for."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from tramontane.engine import EngineConfig, ModelLoadError, cpu_kernels
from tramontane.engine.attention import build_metadata
from tramontane.engine.layers import Linear
from tramontane.engine.prepared import _AllowListPickle
from tramontane.engine.runner import resolve_precision

# fbgemm's 7-bit activations and 8-bit weights: on Gaussian data the output is off by
# ~2% of its norm (per-row relative Frobenius error); our 8-bit blocks by less.
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


# Next-token choices along a text (teacher-forced) that must match float32's, of 46.
# Our kernels round activations to 8 bits per block of 32, as llama.cpp does (greedy
# continuations then follow llama.cpp's on this GGUF rather than f32's, which part after
# a few to a few dozen tokens): 45 of 46 for int4 and int8. Without them, int4 is
# PyTorch's weight-only kernel (45) and int8 fbgemm's per-row 7-bit activations (39).
AGREEMENT = {"int4": 44, "int8": 44 if cpu_kernels.available() else 37}


@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_quantized_model_agrees_with_float32_on_next_tokens(make_engine, quant):
    text = (
        "The capital of France is Paris. It lies on the Seine, and its museums, the Louvre first "
        "among them, draw millions of visitors every year. def fibonacci(n): return n if n < 2 else"
    )
    choices = {}
    for q in ("none", quant):
        engine = make_engine(quantization=q)
        ids = engine.tokenizer.encode(text)
        n = len(ids)
        meta = build_metadata([list(range(n))], [list(range(8))], engine.config.block_size, None, torch.device("cpu"))
        logits = engine.runner.model(torch.tensor([ids]), torch.arange(n)[None], meta, torch.arange(n))
        choices[q] = logits.argmax(-1)
    assert n == 46
    assert (choices[quant] == choices["none"]).sum().item() >= AGREEMENT[quant]
