"""Tensor parallelism proven on the CPU: two gloo ranks, each holding half of every
layer, give the logits and tokens of one process holding the whole model."""

from __future__ import annotations

import multiprocessing
import socket

import pytest
import torch
from gpu_helpers import (
    ARCHS, TP_PROMPTS, greedy, tiny_config, tiny_tensors, tp_engine_config, tp_logits, tp_worker, word_tokenizer,
)

from tramontane.engine import LLMEngine
from tramontane.engine.checkpoint import Checkpoint
from tramontane.engine.errors import ModelLoadError
from tramontane.engine.gpu.parallel import Parallel, check_divisible

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_give_the_logits_and_tokens_of_one_process(tmp_path):
    """Model level (dense and Mixtral): each rank's gathered logits. Engine level
    (Mixtral): rank 0's engine, with rank 1 mirroring its steps and its light sleep,
    generates the tokens of a one-process engine."""
    archs = [ARCHS["mistral"], ARCHS["mixtral"]]
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    ranks = [ctx.Process(target=tp_worker, args=(rank, 2, port, str(tmp_path), archs)) for rank in range(2)]
    for p in ranks:
        p.start()
    try:
        for p in ranks:
            p.join(timeout=240)
    finally:
        for p in ranks:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [p.exitcode for p in ranks] == [0, 0]
    whole = [tp_logits(arch) for arch in archs]
    for rank in range(2):
        for got, want in zip(torch.load(tmp_path / f"rank{rank}.pt"), whole, strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    cfg = tiny_config(**archs[-1])
    one = LLMEngine(Checkpoint(cfg, tiny_tensors(cfg), word_tokenizer(cfg.vocab_size), "tiny"), tp_engine_config())
    want = greedy(one, TP_PROMPTS, 6) + greedy(one, TP_PROMPTS[:1], 6)
    assert torch.load(tmp_path / "engine.pt") == want


def test_shards_split_whole_heads_and_refuse_uneven_splits():
    t = torch.arange(12.0).view(6, 2)
    assert torch.equal(Parallel(rank=1, world=2).shard(t, 0), t[3:])
    assert torch.equal(Parallel(rank=0, world=2).shard(t, 1), t[:, :1])
    with pytest.raises(ModelLoadError):
        Parallel(rank=0, world=4).shard(t, 0)
    with pytest.raises(ModelLoadError, match="key/value heads"):
        check_divisible(8, 2, 64, 512, 4)
