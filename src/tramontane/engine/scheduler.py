"""Continuous batching: which sequences run in the next step, and how many tokens each.

Steps alternate between prefill (new prompts, chunked to a token budget) and decode
(one token for every running sequence), so a burst of long prompts cannot stall the
streams already running. When the KV cache runs out the newest sequence is preempted:
its blocks are freed and it is recomputed later, which keeps the oldest requests moving.
A sequence with a LoRA adapter is admitted only once its adapter has a slot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .config import EngineConfig
from .lora import LoRAManager
from .sequence import SeqStatus, Sequence


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]
    is_prefill: bool


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, loras: LoRAManager):
        self.config = config
        self.blocks = block_manager
        self.loras = loras
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._last_was_prefill = False

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)

    def schedule(self) -> ScheduledBatch | None:
        decodable = [s for s in self.running if not s.is_prefilling]
        if not (decodable and self._last_was_prefill):
            batch = self._schedule_prefill()
            if batch:
                self._last_was_prefill = True
                return batch
        self._last_was_prefill = False
        return self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch | None:
        budget = self.config.max_num_batched_tokens
        seqs: list[Sequence] = []
        counts: list[int] = []
        for seq in self.running:
            if budget <= 0:
                break
            if seq.is_prefilling:
                chunk = min(seq.num_tokens - seq.num_computed_tokens, budget)
                if self.blocks.grow(seq, seq.num_computed_tokens + chunk):
                    seqs.append(seq)
                    counts.append(chunk)
                    budget -= chunk
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if seq.lora is not None:
                seq.lora_slot = self.loras.acquire(seq.lora)
                if seq.lora_slot is None:  # every slot serves running sequences
                    break
            chunk = self.blocks.allocate_prompt(seq, budget)
            if chunk == 0:
                self._release(seq)
                break
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            seqs.append(seq)
            counts.append(chunk)
            budget -= chunk
        return ScheduledBatch(seqs, counts, is_prefill=True) if seqs else None

    def _schedule_decode(self) -> ScheduledBatch | None:
        seqs: list[Sequence] = []
        for seq in sorted(self.running, key=lambda s: s.arrival):
            if seq.status != SeqStatus.RUNNING or seq.is_prefilling:
                continue
            while not self.blocks.grow(seq, seq.num_tokens):
                victim = max(self.running, key=lambda s: s.arrival)
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                seqs.append(seq)
        if not seqs:
            # Only partial prefills hold the cache and none can grow: free the newest.
            stuck = [s for s in self.running if s.is_prefilling]
            if stuck and not self.blocks.num_free:
                self._preempt(max(stuck, key=lambda s: s.arrival))
            return None
        return ScheduledBatch(seqs, [1] * len(seqs), is_prefill=False)

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self.running.remove(seq)
        self._release(seq)
        seq.status = SeqStatus.WAITING
        # Back to the queue in arrival order, so it resumes before newer requests.
        position = sum(1 for s in self.waiting if s.arrival < seq.arrival)
        self.waiting.insert(position, seq)

    def _release(self, seq: Sequence) -> None:
        self.blocks.free_sequence(seq)
        if seq.lora_slot is not None:
            self.loras.release(seq.lora_slot)
            seq.lora_slot = None
