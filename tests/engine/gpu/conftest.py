"""Fixtures of the GPU path's CPU tests."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import ARCHS, tiny_config, tiny_tensors, word_tokenizer

from tramontane.engine.checkpoint import Checkpoint


@pytest.fixture
def tiny_checkpoint():
    """Checkpoint(arch) -> a tiny random model of that family."""

    def make(arch: str = "mistral", **overrides) -> Checkpoint:
        cfg = tiny_config(**{**ARCHS[arch], **overrides})
        return Checkpoint(cfg, tiny_tensors(cfg), word_tokenizer(cfg.vocab_size), f"tiny-{arch}")

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread computes them fastest, and spares the
    machine's other work the wake-ups of a thread pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
