"""The GPU path forced onto the CPU, against the CPU engine: same logits, same
greedy tokens, through the real scheduler (prefix-cache hits, chunked prefill,
decode batches), for dense, sliding-window and MoE models."""

from __future__ import annotations

import pytest
import torch

from tramontane.engine import EngineConfig, LLMEngine
from tramontane.engine.attention import build_metadata
from tramontane.engine.errors import InvalidRequestError, ModelLoadError
from tramontane.engine.gpu.paged_flex import StepShape, build_flex_metadata
from tramontane.engine.gpu.runner import GPUModelRunner, uses_gpu_path
from tramontane.engine.model import CausalLM

from gpu_helpers import ARCHS, engine_pair, greedy, tiny_config, tiny_tensors

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def test_runner_choice():
    assert not uses_gpu_path(EngineConfig())
    assert uses_gpu_path(EngineConfig(device="cuda"))
    assert uses_gpu_path(EngineConfig(attention_backend="flex"))
    assert not uses_gpu_path(EngineConfig(device="cuda", attention_backend="cpu"))


@pytest.mark.parametrize("arch", ["mistral", "sliding-window", "mixtral"])
def test_prefill_then_decode_logits_match_the_cpu_model(arch):
    cfg = tiny_config(**ARCHS[arch])
    tensors = tiny_tensors(cfg)
    ref = CausalLM(cfg, tensors, "none", torch.float32)
    runner = GPUModelRunner(cfg, tensors, EngineConfig(num_kv_blocks=8, quantization="none", dtype="float32",
                                                        block_size=4, attention_backend="flex"))
    ref_cache = torch.zeros(len(ref.layers), 2, 8 * 4, cfg.num_key_value_heads, cfg.head_dim)
    for attn, c in zip(ref.attention_layers(), ref_cache, strict=True):
        attn.k_cache, attn.v_cache = c[0], c[1]
    ids = torch.randint(3, cfg.vocab_size, (13,), generator=torch.Generator().manual_seed(1))
    table = [5, 2, 7, 0]
    for start, count in ((0, 11), (11, 1), (12, 1)):  # a prompt, then two decode steps
        positions = list(range(start, start + count))
        meta = build_metadata([positions], [table], 4, cfg.sliding_window, torch.device("cpu"))
        want = ref(ids[None, start : start + count], torch.tensor([positions]), meta, torch.tensor([count - 1]))
        fmeta = build_flex_metadata([StepShape(start, count, table)], 4, runner.num_slots, cfg.sliding_window,
                                    torch.device("cpu"))
        got = runner._run(ids[start : start + count], torch.tensor(positions), fmeta)
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["mistral", "sliding-window", "mixtral"])
def test_engine_greedy_tokens_match_the_cpu_engine(arch, tiny_checkpoint):
    checkpoint = tiny_checkpoint(arch)
    # Small chunks: prompts prefill over several steps, mixed with decodes; the third
    # prompt shares the first's first two blocks (a prefix-cache hit).
    cpu, flex = engine_pair(checkpoint, max_num_batched_tokens=24, block_size=8)
    gen = torch.Generator().manual_seed(2)
    first = torch.randint(3, 512, (30,), generator=gen).tolist()
    prompts = [first, torch.randint(3, 512, (9,), generator=gen).tolist(), first[:16] + [7, 8, 9]]
    want = greedy(cpu, prompts, 10)
    got = greedy(flex, prompts, 10)
    assert got == want
    assert flex.stats().prefix_cache_hits >= 2


@pytest.mark.slow
def test_default_model_greedy_matches_the_cpu_engine(smollm_checkpoint):
    """A real (135M) model: the flex path agrees with the CPU engine token for token."""
    cpu, flex = engine_pair(smollm_checkpoint)
    tok = smollm_checkpoint.tokenizer
    prompts = [tok.encode("The capital of France is"), tok.encode("1, 2, 3, 4,")]
    assert greedy(flex, prompts, 6) == greedy(cpu, prompts, 6)


def test_gpu_path_rejects_what_it_does_not_serve(tiny_checkpoint):
    checkpoint = tiny_checkpoint()
    with pytest.raises(ModelLoadError, match="int8"):
        LLMEngine(checkpoint, EngineConfig(attention_backend="flex", quantization="int8", num_kv_blocks=8))
    engine = LLMEngine(checkpoint, EngineConfig(attention_backend="flex", num_kv_blocks=8))
    assert engine.runner.dtype == torch.bfloat16  # bf16 by default on the GPU path
    with pytest.raises(InvalidRequestError, match="LoRA"):
        engine.loras.add(object())  # type: ignore[arg-type]


@pytest.mark.slow
def test_compiled_flex_runner_matches_the_dense_reference():
    """The fused kernel path (torch.compile's flex template, here on the CPU, static
    bucketed shapes) through a prompt chunk, a prefix hit and a decode batch."""
    cfg = tiny_config(sliding_window=8)
    tensors = tiny_tensors(cfg)
    base = dict(num_kv_blocks=48, block_size=8, quantization="none", dtype="float32", attention_backend="flex")
    compiled = GPUModelRunner(cfg, tensors, EngineConfig(compile_attention=True, **base))
    dense = GPUModelRunner(cfg, tensors, EngineConfig(**base))
    steps = [
        [StepShape(0, 24, [1, 2, 3])],
        [StepShape(24, 6, [1, 2, 3, 4]), StepShape(16, 3, [1, 2, 9])],  # the second shares two blocks
        [StepShape(30, 1, [1, 2, 3, 4]), StepShape(19, 1, [1, 2, 9])],
    ]
    for shapes in steps:
        ids = torch.arange(sum(s.count for s in shapes)) + 3
        pos = torch.cat([torch.arange(s.start, s.start + s.count) for s in shapes])
        want = dense._run(ids, pos, dense._metadata(shapes))
        got = compiled._run(ids, pos, compiled._metadata(shapes))
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
