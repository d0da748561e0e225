"""Grouped-matmul experts against the per-expert loop; FP8 and int4 linears and
models against bf16 logits (the CPU has both kernels in this PyTorch)."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import tiny_config, tiny_tensors

from tramontane.engine import EngineConfig
from tramontane.engine.config import ModelConfig
from tramontane.engine.gpu.moe import GroupedMoE, grouped_mm_available
from tramontane.engine.gpu.paged_flex import StepShape, build_flex_metadata
from tramontane.engine.gpu.quant import GPULinear
from tramontane.engine.gpu.runner import GPUModelRunner
from tramontane.engine.model import SparseMoE

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _moe_weights(experts=8, hidden=64, ffn=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = {"gate": torch.randn(experts, hidden, generator=gen)}
    for e in range(experts):
        w[f"experts.{e}.w1"] = torch.randn(ffn, hidden, generator=gen) / 8
        w[f"experts.{e}.w3"] = torch.randn(ffn, hidden, generator=gen) / 8
        w[f"experts.{e}.w2"] = torch.randn(hidden, ffn, generator=gen) / 8
    return w


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("tokens", [1, 5, 37])
def test_grouped_moe_matches_the_expert_loop(grouped, tokens):
    experts, top_k = 8, 2
    w = _moe_weights(experts)
    cfg = ModelConfig("mixtral", 10, 64, 96, 1, 4, 4, 16, num_local_experts=experts, num_experts_per_tok=top_k)
    loop = SparseMoE(cfg, w, "none")
    w13 = torch.stack([torch.cat([w[f"experts.{e}.w1"], w[f"experts.{e}.w3"]]) for e in range(experts)])
    w2 = torch.stack([w[f"experts.{e}.w2"] for e in range(experts)])
    moe = GroupedMoE(w["gate"], w13, w2, top_k, torch.float32)
    if grouped:
        assert moe.grouped == grouped_mm_available("cpu", None, torch.float32)
        if not moe.grouped:
            pytest.skip("this PyTorch has no grouped matmul on the CPU")
    moe.grouped = grouped
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(tokens))
    torch.testing.assert_close(moe(x), loop(x[None])[0], atol=1e-5, rtol=1e-5)


def test_grouped_moe_in_bf16_matches_the_loop():
    w = _moe_weights()
    cfg = ModelConfig("mixtral", 10, 64, 96, 1, 4, 4, 16, num_local_experts=8, num_experts_per_tok=2)
    loop = SparseMoE(cfg, w, "none")
    w13 = torch.stack([torch.cat([w[f"experts.{e}.w1"], w[f"experts.{e}.w3"]]) for e in range(8)])
    w2 = torch.stack([w[f"experts.{e}.w2"] for e in range(8)])
    moe = GroupedMoE(w["gate"], w13, w2, 2, torch.bfloat16)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    got = moe(x.bfloat16()).float()
    torch.testing.assert_close(got, loop(x[None])[0], atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("kind", ["fp8", "int4"])
def test_quantized_linear_close_to_bf16(kind):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 256, generator=gen) / 16
    x = torch.randn(7, 256, generator=gen)
    want = GPULinear(weight, "none", torch.bfloat16)(x).float()
    linear = GPULinear(weight, kind, torch.bfloat16)
    assert linear.kind == kind
    got = linear(x).float()
    # FP8 e4m3 keeps 3 mantissa bits, int4 16 levels per group of 128.
    assert (got - want).norm() / want.norm() < (0.05 if kind == "fp8" else 0.12)


def test_a_shape_the_kernel_cannot_take_stays_unquantized():
    assert GPULinear(torch.randn(24, 100), "int4", torch.bfloat16).kind == "none"
    assert GPULinear(torch.randn(24, 100), "fp8", torch.bfloat16).kind == "none"


def _last_logits(runner: GPUModelRunner, ids: torch.Tensor) -> torch.Tensor:
    meta = build_flex_metadata([StepShape(0, len(ids), [0, 1])], 16, runner.num_slots, None, torch.device("cpu"))
    return runner._run(ids, torch.arange(len(ids)), meta)[0]


@pytest.mark.parametrize("kind", ["fp8", "int4"])
def test_quantized_model_logits_close_to_bf16(kind):
    cfg = tiny_config()
    tensors = tiny_tensors(cfg)
    ids = torch.randint(3, cfg.vocab_size, (20,), generator=torch.Generator().manual_seed(4))

    def logits(quantization):
        config = EngineConfig(num_kv_blocks=4, quantization=quantization, attention_backend="flex")
        return _last_logits(GPUModelRunner(cfg, tensors, config), ids)

    bf16, quantized = logits("auto"), logits(kind)
    cos = torch.nn.functional.cosine_similarity(bf16, quantized, dim=0)
    assert cos > (0.995 if kind == "fp8" else 0.98)
    # The most likely tokens stay the most likely.
    assert bf16.topk(1).indices.item() in quantized.topk(3).indices.tolist()
