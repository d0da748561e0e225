"""Tramontane's inference engine: Llama/Mistral/Mixtral on PyTorch with continuous
batching, a paged KV cache with prefix caching, and an asyncio front end."""

from .async_engine import AsyncEngine
from .checkpoint import Checkpoint, load_checkpoint, load_tokenizer
from .config import EngineConfig, ModelConfig
from .errors import (
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    ModelLoadError,
)
from .llm_engine import EngineStats, LLMEngine
from .multimodal import ImageInput
from .outputs import CompletionOutput, RequestOutput, TokenLogprob
from .sampling_params import SamplingParams, TokenConstraint
from .sequence import Priority, Tenant
from .tokenizer import IncrementalDecoder, Tokenizer

__all__ = [
    "AsyncEngine",
    "Checkpoint",
    "CompletionOutput",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineOverloadedError",
    "EngineStats",
    "ImageInput",
    "IncrementalDecoder",
    "InvalidRequestError",
    "LLMEngine",
    "ModelConfig",
    "ModelLoadError",
    "Priority",
    "RequestOutput",
    "SamplingParams",
    "Tenant",
    "TokenConstraint",
    "TokenLogprob",
    "Tokenizer",
    "load_checkpoint",
    "load_tokenizer",
]
