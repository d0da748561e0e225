"""Paged KV-cache bookkeeping: blocks, reference counts and the prefix cache.

A full block is identified by a hash chained over every token before it, so two
sequences sharing a prompt prefix share the blocks holding it. Freed blocks keep
their hash until reused, which makes the free list an LRU cache of prefixes.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import xxhash

from .sequence import Sequence


class Block:
    __slots__ = ("block_id", "hash", "ref_count")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None


def chain_hash(tokens: list[int], prev_hash: int | None, extra_keys: tuple[int, ...] = ()) -> int:
    """`extra_keys`: what else the block's KV depends on (the hashes of its images)."""
    h = xxhash.xxh64()
    if prev_hash is not None:
        h.update(prev_hash.to_bytes(8, "little"))
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    if extra_keys:
        h.update(np.asarray(extra_keys, dtype=np.uint64).tobytes())
    return h.intdigest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in least-recently-freed order; the front is reused first.
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        self.prefix_queries = 0
        self.prefix_hits = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def _take_free(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]
        block.hash = None
        block.ref_count = 1
        return block_id

    def _ref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def allocate_prompt(self, seq: Sequence, max_new_tokens: int) -> int:
        """Give a sequence that holds no blocks room for its first chunk, reusing cached
        full blocks of its prefix. Returns how many tokens the chunk computes (at most
        `max_new_tokens`), or 0, allocating nothing, when there is no room."""
        assert not seq.block_table
        tokens = seq.token_ids
        bs = self.block_size
        cached: list[int] = []
        hashes: list[int] = []
        prev = seq.prefix_cache_seed
        if self.enable_prefix_caching:
            # At least one token must be computed to produce logits, hence len - 1.
            for i in range((len(tokens) - 1) // bs):
                prev = chain_hash(tokens[i * bs : (i + 1) * bs], prev, seq.cache_keys(i * bs, (i + 1) * bs))
                block_id = self.hash_to_block.get(prev)
                if block_id is None:
                    break
                cached.append(block_id)
                hashes.append(prev)
        num_cached = len(cached) * bs
        chunk = min(len(tokens) - num_cached, max_new_tokens)
        needed = self.blocks_needed(num_cached + chunk) - len(cached)
        reusable_free = sum(1 for b in cached if self.blocks[b].ref_count == 0)
        if chunk <= 0 or needed > self.num_free - reusable_free:
            return 0
        for block_id in cached:
            self._ref(block_id)
        seq.block_table = cached + [self._take_free() for _ in range(needed)]
        seq.block_hashes = hashes
        seq.num_computed_tokens = num_cached
        seq.num_cached_tokens = num_cached
        self.prefix_queries += len(tokens)
        self.prefix_hits += num_cached
        return chunk

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Make room for the sequence to hold `num_tokens` tokens in total."""
        needed = self.blocks_needed(num_tokens) - len(seq.block_table)
        if needed > self.num_free:
            return False
        seq.block_table.extend(self._take_free() for _ in range(max(needed, 0)))
        return True

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publish the hashes of blocks that became full and computed, for reuse."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        tokens = seq.token_ids
        while (len(seq.block_hashes) + 1) * bs <= seq.num_computed_tokens:
            i = len(seq.block_hashes)
            prev = seq.block_hashes[-1] if seq.block_hashes else seq.prefix_cache_seed
            h = chain_hash(tokens[i * bs : (i + 1) * bs], prev, seq.cache_keys(i * bs, (i + 1) * bs))
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash = h
                self.hash_to_block.setdefault(h, block.block_id)

    def free_sequence(self, seq: Sequence) -> None:
        # Release in reverse so a prefix's tail is evicted before its head.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
