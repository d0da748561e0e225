"""Continuous batching, shared fairly: which sequences run in the next step, and how
many tokens each.

Steps alternate between prefill (new prompts, chunked to a token budget) and decode
(one token for every running sequence), so a burst of long prompts cannot stall the
streams already running. A sequence with a LoRA adapter is admitted only once its
adapter has a slot.

Sharing. Every sequence carries a `Tenant` (workspace, key, weight) and a `Priority`
class. Whenever the scheduler has a choice (which waiting sequence takes a free slot,
how a step's prefill budget is split, which sequence gives its KV blocks back when
the cache is full) the lower class goes first and, within a class, the workspace that
has received the least service for its weight, then its least served key, then the
oldest request. Service is counted as virtual time (`FairShare`): the tokens computed
for a workspace divided by its weight, as in weighted fair queueing. Since every
running sequence decodes one token per step, a workspace with one stream and one
with 32 get the same per-stream service; what fairness decides is who gets the
slots, the prefill budget and the cache, where first come first served would let
the bigger client take them all.

Preemption frees a sequence's blocks and puts it back in the queue; it is
recomputed later (its full blocks usually still in the prefix cache). Victims are
the lowest class first, then the most served workspace, then the newest request.
A waiting sequence preempts running sequences of a lower class when the cache or
the running slots are full, and a workspace holding fewer running slots than its
weighted share takes one back from the workspace most over its share.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .config import EngineConfig
from .lora import LoRAManager
from .sequence import SeqStatus, Sequence

# A workspace's virtual time never trails the busiest active one's by more than this
# (in weighted tokens): service it did not ask for while it had little to do is not
# banked for a later burst, which would otherwise shut the others out for as long.
FAIR_LAG_TOKENS = 4096.0


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]
    is_prefill: bool


class FairShare:
    """Virtual time of each active workspace (tokens computed for it / its weight) and
    of each active key within its workspace (tokens). A workspace or key becoming
    active starts at the least virtual time among its active peers, so idling earns
    nothing; one going idle is forgotten."""

    def __init__(self, lag_tokens: float = FAIR_LAG_TOKENS):
        self.lag_tokens = lag_tokens
        self.workspace_vtime: dict[str, float] = {}
        self.key_vtime: dict[tuple[str, str], float] = {}
        self._members: Counter[str] = Counter()
        self._key_members: Counter[tuple[str, str]] = Counter()

    def join(self, seq: Sequence) -> None:
        workspace, key = seq.tenant.workspace, (seq.tenant.workspace, seq.tenant.key)
        if not self._members[workspace]:
            self.workspace_vtime[workspace] = min(self.workspace_vtime.values(), default=0.0)
        if not self._key_members[key]:
            peers = [v for (ws, _), v in self.key_vtime.items() if ws == workspace]
            self.key_vtime[key] = min(peers, default=0.0)
        self._members[workspace] += 1
        self._key_members[key] += 1

    def leave(self, seq: Sequence) -> None:
        workspace, key = seq.tenant.workspace, (seq.tenant.workspace, seq.tenant.key)
        self._members[workspace] -= 1
        self._key_members[key] -= 1
        if not self._members[workspace]:
            del self._members[workspace], self.workspace_vtime[workspace]
        if not self._key_members[key]:
            del self._key_members[key], self.key_vtime[key]

    def charge(self, seq: Sequence, tokens: int) -> None:
        self.workspace_vtime[seq.tenant.workspace] += tokens / seq.tenant.weight
        self.key_vtime[(seq.tenant.workspace, seq.tenant.key)] += tokens

    def bound_lag(self) -> None:
        if len(self.workspace_vtime) < 2:
            return
        floor = max(self.workspace_vtime.values()) - self.lag_tokens
        for workspace, vtime in self.workspace_vtime.items():
            if vtime < floor:
                self.workspace_vtime[workspace] = floor

    def rank(self, seq: Sequence) -> tuple[int, float, float, int]:
        """Lower ranks are served first and preempted last."""
        tenant = seq.tenant
        return (
            seq.priority,
            self.workspace_vtime[tenant.workspace],
            self.key_vtime[(tenant.workspace, tenant.key)],
            seq.arrival,
        )


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, loras: LoRAManager):
        self.config = config
        self.blocks = block_manager
        self.loras = loras
        self.fair = FairShare()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._last_was_prefill = False

    def add(self, seq: Sequence) -> None:
        self.fair.join(seq)
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        else:
            return
        self.fair.leave(seq)
        self._release(seq)

    def schedule(self) -> ScheduledBatch | None:
        decodable = any(not s.is_prefilling for s in self.running)
        batch = None
        if not (decodable and self._last_was_prefill):
            batch = self._schedule_prefill()
        self._last_was_prefill = batch is not None
        if batch is None:
            batch = self._schedule_decode()
        if batch is not None:
            for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
                self.fair.charge(seq, n)
            self.fair.bound_lag()
        return batch

    # -- prefill -----------------------------------------------------------------

    def _schedule_prefill(self) -> ScheduledBatch | None:
        """Splits the token budget between workspaces by weighted fair queueing: the
        workspace with the least virtual time (counting what this step already gave
        it) takes the next turn, for its best ranked sequence. A turn is at most an
        equal slice of the budget, so that one long prompt cannot take a whole step
        while another workspace has a prompt waiting."""
        candidates = [s for s in self.running if s.is_prefilling] + self.waiting
        if not candidates:
            return None
        queues: dict[str, deque[Sequence]] = {}
        for seq in sorted(candidates, key=self.fair.rank):
            queues.setdefault(seq.tenant.workspace, deque()).append(seq)
        turns = [(q[0].priority, self.fair.workspace_vtime[ws], q[0].arrival, ws) for ws, q in queues.items()]
        heapq.heapify(turns)
        budget = self.config.max_num_batched_tokens
        quantum = max(self.blocks.block_size, -(-budget // len(queues)))
        granted: dict[Sequence, int] = {}  # in the order they were first scheduled
        admitting = True  # False once a waiting sequence found no room: none may overtake it
        while turns and budget > 0:
            _, vtime, _, workspace = heapq.heappop(turns)
            queue = queues[workspace]
            seq = queue.popleft()
            turn = min(budget, quantum)
            if seq in granted:
                chunk = self._extend_prefill(seq, granted[seq], turn)
            elif seq.status == SeqStatus.RUNNING:
                chunk = self._extend_prefill(seq, 0, turn)
            elif admitting:
                chunk, admitting = self._admit(seq, turn, list(granted))
            else:
                chunk = 0
            if chunk:
                granted[seq] = granted.get(seq, 0) + chunk
                budget -= chunk
                vtime += chunk / seq.tenant.weight
                if seq.num_computed_tokens + granted[seq] < seq.num_tokens:
                    queue.appendleft(seq)  # more of its prompt, on the workspace's next turn
            if queue:
                heapq.heappush(turns, (queue[0].priority, vtime, queue[0].arrival, workspace))
        if not granted:
            return None
        return ScheduledBatch(list(granted), list(granted.values()), is_prefill=True)

    def _extend_prefill(self, seq: Sequence, already: int, turn: int) -> int:
        """Up to `turn` more prompt tokens for a sequence holding blocks, `already`
        granted this step; 0 if the cache has no room for them."""
        start = seq.num_computed_tokens + already
        chunk = min(seq.num_tokens - start, turn)
        return chunk if chunk > 0 and self.blocks.grow(seq, start + chunk) else 0

    def _admit(self, seq: Sequence, budget: int, scheduled: list[Sequence]) -> tuple[int, bool]:
        """Moves a waiting sequence to running with its first chunk. Returns the
        chunk (0: it cannot run now) and whether others may still be admitted (not
        when slots or cache ran out: a later sequence must not overtake this one)."""
        if len(self.running) >= self.config.max_num_seqs:
            victim = self._victim_below(seq, scheduled) or self._over_share_victim(seq, scheduled)
            if victim is None:
                return 0, False
            self._preempt(victim)
        if seq.lora is not None:
            seq.lora_slot = self.loras.acquire(seq.lora)
            if seq.lora_slot is None:  # every slot serves running sequences: others may go
                return 0, True
        chunk = self.blocks.allocate_prompt(seq, budget)
        while chunk == 0 and (victim := self._victim_below(seq, scheduled)) is not None:
            self._preempt(victim)
            chunk = self.blocks.allocate_prompt(seq, budget)
        if chunk == 0:
            self._release(seq)
            return 0, False
        self.waiting.remove(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        return chunk, True

    def _victim_below(self, seq: Sequence, scheduled: list[Sequence]) -> Sequence | None:
        """The running sequence of a lower class than `seq` to preempt first, if any."""
        lower = [s for s in self.running if s.priority > seq.priority and s not in scheduled]
        return max(lower, key=self.fair.rank) if lower else None

    def _over_share_victim(self, seq: Sequence, scheduled: list[Sequence]) -> Sequence | None:
        """With every slot taken: the newest sequence of the workspace most over its
        weighted share of slots, if taking it leaves that workspace no poorer than
        `seq`'s (so that two workspaces never take a slot back and forth)."""
        held: Counter[str] = Counter(s.tenant.workspace for s in self.running)
        weights = {s.tenant.workspace: s.tenant.weight for s in self.running}
        mine = (held[seq.tenant.workspace] + 1) / seq.tenant.weight
        richest = max(held, key=lambda ws: held[ws] / weights[ws])
        if richest == seq.tenant.workspace or (held[richest] - 1) / weights[richest] < mine:
            return None
        theirs = [
            s for s in self.running
            if s.tenant.workspace == richest and s.priority >= seq.priority and s not in scheduled
        ]
        return max(theirs, key=lambda s: (s.priority, s.arrival)) if theirs else None

    # -- decode ------------------------------------------------------------------

    def _schedule_decode(self) -> ScheduledBatch | None:
        seqs: list[Sequence] = []
        # Best ranked first: when the cache runs out, the worst ranked (lowest class,
        # most served workspace, newest) give their blocks back, and come later.
        for seq in sorted((s for s in self.running if not s.is_prefilling), key=self.fair.rank):
            if seq.status != SeqStatus.RUNNING:
                continue  # preempted below for an earlier one
            while not self.blocks.grow(seq, seq.num_tokens):
                victim = max(self.running, key=self.fair.rank)
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                seqs.append(seq)
        if not seqs:
            # Only partial prefills hold the cache and none can grow: free the worst ranked.
            stuck = [s for s in self.running if s.is_prefilling]
            if stuck and not self.blocks.num_free:
                self._preempt(max(stuck, key=self.fair.rank))
            return None
        return ScheduledBatch(seqs, [1] * len(seqs), is_prefill=False)

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self.running.remove(seq)
        self._release(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)  # its rank, not its place in the list, decides when it resumes

    def _release(self, seq: Sequence) -> None:
        self.blocks.free_sequence(seq)
        if seq.lora_slot is not None:
            self.loras.release(seq.lora_slot)
            seq.lora_slot = None
