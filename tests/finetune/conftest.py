"""Fixtures of the fine-tuning tests: `platform` serves the default models with the
whole fine-tuning stack, for the SDK, batch and end-to-end tests; `start_server`
starts a server without engines on this test's home, twice over the same home for
the restart test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_helpers import CHAT_MODEL, Server, serve

from tramontane.cli.up import load_models
from tramontane.engine.defaults import default_chat_model_path
from tramontane.inference import ModelRegistry, default_model_specs


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Training runs beside the engine on a small, shared machine, where two
    threads that wait on each other's spinning cores run several times slower
    than one (measured: 10x on the 2-core CI machine under load). Per module, so
    that other packages' tests keep the default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default models and the fine-tuning stack."""
    registry = load_models(default_model_specs())
    with serve(tmp_path_factory.mktemp("home"), registry, registry.checkpoints(), max_file_bytes=1024 * 1024) as server:
        yield server


@pytest.fixture
def start_server(tmp_path: Path) -> Callable[[], Any]:
    """Starts a server without engines (fine-tuning needs only the checkpoint) on this test's home."""
    return lambda: serve(tmp_path, ModelRegistry(), {CHAT_MODEL: default_chat_model_path()})
