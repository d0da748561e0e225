"""State of one generated sequence (a request with n > 1 owns n of them)."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .outputs import TokenLogprob
from .sampling_params import SamplingParams, TokenConstraint

if TYPE_CHECKING:
    from .lora import LoRAAdapter
    from .multimodal import PromptImages
    from .tokenizer import IncrementalDecoder


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Priority(enum.IntEnum):
    """Scheduling class: a lower value is served first, and preempts the higher
    values' sequences when the KV cache or the running slots are full."""

    INTERACTIVE = 0  # API requests with a caller waiting
    BATCH = 1  # Batch API jobs: hours of deadline
    EVALUATION = 2  # evaluation runs: whatever capacity is left


@dataclass(frozen=True)
class Tenant:
    """Whom a request's compute is for. The scheduler shares the engine between
    workspaces in proportion to `weight`, then equally between a workspace's keys."""

    workspace: str = ""
    key: str = ""
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"a tenant's weight must be positive, got {self.weight}")


ANONYMOUS = Tenant()

_seq_ids = itertools.count()


class Sequence:
    def __init__(
        self,
        request_id: str,
        index: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        decoder: IncrementalDecoder,
        arrival: int,
        lora: LoRAAdapter | None = None,
        tenant: Tenant = ANONYMOUS,
        priority: Priority = Priority.INTERACTIVE,
        images: PromptImages | None = None,
    ):
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.index = index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.max_tokens = max_tokens
        self.arrival = arrival  # FIFO order; preempted sequences keep theirs
        self.queued_at = time.monotonic()
        self.tenant = tenant
        self.priority = priority
        self.status = SeqStatus.WAITING
        self.lora = lora
        self.images = images  # the prompt's images, shared with the request's other sequences
        self.lora_slot: int | None = None  # while admitted: the slot holding its adapter
        # KV cache
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        # Sampling state
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed + index)
        self.constraint: TokenConstraint | None = (
            params.constraint_factory() if params.constraint_factory else None
        )
        # Output state
        self.decoder = decoder
        self.text = ""  # all decoded text, stop string still included
        self.emitted_chars = 0  # how much of `text` was already streamed
        self.new_token_ids: list[int] = []
        self.new_logprobs: list[TokenLogprob] = []
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def is_prefilling(self) -> bool:
        # Decode computes exactly the newest token; anything more is (re)prefill.
        return self.num_tokens - self.num_computed_tokens > 1

    @property
    def prefix_cache_seed(self) -> int | None:
        """Starts the prefix hash chain: KV computed under one adapter never serves another."""
        return self.lora.id if self.lora is not None else None

    def cache_keys(self, start: int, end: int) -> tuple[int, ...]:
        """What besides its tokens identifies the KV of positions [start, end): the
        content hashes of the images there."""
        return self.images.cache_keys(start, end) if self.images is not None else ()

    @property
    def finished(self) -> bool:
        return self.status == SeqStatus.FINISHED
