"""Fixtures of the GPU path's CPU tests."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import ARCHS, tiny_config, tiny_tensors

from tramontane.engine.checkpoint import Checkpoint


@pytest.fixture
def tiny_checkpoint(smollm_checkpoint):
    """Checkpoint(arch) -> a tiny random model of that family, with the default
    model's tokenizer (only its ids matter here)."""

    def make(arch: str = "mistral", **overrides) -> Checkpoint:
        cfg = tiny_config(**{**ARCHS[arch], **overrides})
        return Checkpoint(cfg, tiny_tensors(cfg), smollm_checkpoint.tokenizer, f"tiny-{arch}")

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread computes them fastest, and spares the
    machine's other work the wake-ups of a thread pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
