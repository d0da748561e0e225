"""Decode graph buckets and padding (capture itself needs CUDA: marked gpu), and
light sleep's code path on the CPU."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import greedy, tiny_config, tiny_tensors

from tramontane.engine import EngineConfig, LLMEngine
from tramontane.engine.gpu.cuda_graphs import bucket_for, decode_buckets, pad_decode
from tramontane.engine.gpu.paged_flex import StepShape, build_flex_metadata
from tramontane.engine.gpu.runner import GPUModelRunner

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def test_buckets():
    assert decode_buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert decode_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    assert decode_buckets(3) == [1, 2, 3]
    assert decode_buckets(1) == [1]
    buckets = decode_buckets(64)
    assert [bucket_for(n, buckets) for n in (1, 3, 8, 9, 17, 64)] == [1, 4, 8, 16, 32, 64]
    assert bucket_for(65, buckets) is None


def test_padding_adds_dummies_in_the_pad_block():
    shapes = [StepShape(7, 1, [3, 4]), StepShape(2, 1, [9])]
    padded, tokens = pad_decode(shapes, [11, 12], 4, pad_block=20)
    assert tokens == [11, 12, 0, 0]
    assert padded[:2] == shapes
    assert all(s.start == 0 and s.count == 1 and list(s.block_table) == [20] for s in padded[2:])
    with pytest.raises(ValueError):
        pad_decode([StepShape(0, 2, [1])], [1, 2], 4, pad_block=20)
    with pytest.raises(ValueError):
        pad_decode(shapes, [11, 12], 1, pad_block=20)


def test_a_padded_decode_step_gives_the_real_rows_the_unpadded_logits():
    """What a replayed graph computes: the bucket's padded batch. Its real rows
    match the unpadded step, and the dummies write only to the pad block."""
    cfg = tiny_config()
    runner = GPUModelRunner(cfg, tiny_tensors(cfg), EngineConfig(
        num_kv_blocks=8, block_size=4, quantization="none", dtype="float32", attention_backend="flex"))
    # Fill two sequences' context through a prefill.
    prompt = [StepShape(0, 6, [2, 5]), StepShape(0, 3, [1])]
    ids = torch.randint(3, cfg.vocab_size, (9,), generator=torch.Generator().manual_seed(0))
    runner._run(ids, torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2]), runner._metadata(prompt))

    decode = [StepShape(6, 1, [2, 5]), StepShape(3, 1, [1])]
    before = [a.k_cache.clone() for a in runner.model.attention_layers()]
    want = runner._run(torch.tensor([7, 8]), torch.tensor([6, 3]), runner._metadata(decode))
    after_unpadded = [a.k_cache.clone() for a in runner.model.attention_layers()]

    for layer, cache in zip(runner.model.attention_layers(), before, strict=True):
        layer.k_cache.copy_(cache)
    padded, tokens = pad_decode(decode, [7, 8], 4, runner.pad_block)
    positions = torch.tensor([s.start for s in padded])
    got = runner._run(torch.tensor(tokens), positions, runner._metadata(padded))
    torch.testing.assert_close(got[:2], want, atol=1e-5, rtol=1e-5)
    # Outside the pad block the cache holds what the unpadded step wrote (up to the
    # last bits of a matmul over more rows); the dummies' keys went to the pad block.
    real = runner.pad_block * 4
    for layer, cache in zip(runner.model.attention_layers(), after_unpadded, strict=True):
        torch.testing.assert_close(layer.k_cache[:, :real], cache[:, :real], atol=1e-5, rtol=1e-5)
        assert layer.k_cache[:, real].abs().sum() > 0 and not cache[:, real:].any()


def test_graph_metadata_refills_in_place():
    """A bucket's later steps copy into the captured tensors: same shapes."""
    shapes_a, _ = pad_decode([StepShape(5, 1, [1, 2])], [3], 2, pad_block=9)
    shapes_b, _ = pad_decode([StepShape(9, 1, [4, 6, 7]), StepShape(0, 1, [8])], [3, 4], 2, pad_block=9)
    a = build_flex_metadata(shapes_a, 4, 40, None, torch.device("cpu"))
    b = build_flex_metadata(shapes_b, 4, 40, None, torch.device("cpu"))
    pointers = {name: t.data_ptr() for name, t in a.tensors().items()}
    a.copy_(b)
    for name, tensor in a.tensors().items():
        assert tensor.data_ptr() == pointers[name]
        assert torch.equal(tensor, getattr(b, name))


def test_light_sleep_frees_the_cache_moves_the_weights_and_wakes_the_same(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint(), EngineConfig(
        num_kv_blocks=16, quantization="none", dtype="float32", attention_backend="flex"))
    prompts = [list(range(5, 30))]
    before = greedy(engine, prompts, 6)
    runner = engine.runner
    weights = {name: t.clone() for name, t in runner.model.state_dict().items()}
    pointers = [t.data_ptr() for t in runner._tensors()]

    engine.sleep()
    assert runner.weights_on_host
    assert all(a.k_cache.numel() == 0 and a.v_cache.numel() == 0 for a in runner.model.attention_layers())
    # The weights now live in the host copies (fresh storage), not the old tensors.
    assert all(t.data_ptr() != p for t, p in zip(runner._tensors(), pointers, strict=True))

    engine.wake_up()
    assert not runner.weights_on_host
    for name, tensor in runner.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    assert greedy(engine, prompts, 6) == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_matches_eager_decode(tiny_checkpoint):
    base = dict(num_kv_blocks=32, quantization="none", device="cuda", max_num_seqs=8)
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40)]
    eager = greedy(LLMEngine(tiny_checkpoint(), EngineConfig(cuda_graphs=False, **base)), prompts, 12)
    graphs = LLMEngine(tiny_checkpoint(), EngineConfig(cuda_graphs=True, **base))
    assert greedy(graphs, prompts, 12) == eager
    assert graphs.runner.graphs._graphs  # decode steps went through captured graphs
