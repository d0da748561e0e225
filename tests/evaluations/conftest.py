"""One live platform for the evaluations tests (evaluations_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from evaluations_helpers import Platform, serve

from tramontane.cli.up import load_models
from tramontane.inference import default_model_specs
from tramontane.sandbox import ManagerConfig, SandboxManager


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Fine-tuning runs beside the engine on a small shared machine (see tests/finetune/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    registry = load_models(default_model_specs())
    sandboxes = SandboxManager(ManagerConfig(pool_size=0, microvm_pool_size=0, max_sandboxes=4))
    with serve(tmp_path_factory.mktemp("evals-home"), registry, sandboxes=sandboxes) as server:
        yield server
