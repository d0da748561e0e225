"""Paged KV bookkeeping without a model: ref counts, prefix hashing, LRU reuse."""

from tramontane.engine.block_manager import BlockManager
from tramontane.engine.sampling_params import SamplingParams
from tramontane.engine.sequence import Sequence


class _NoDecoder:
    def step(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


def seq(tokens: list[int]) -> Sequence:
    return Sequence("r", 0, tokens, SamplingParams(), 16, _NoDecoder(), 0)


def compute_all(bm: BlockManager, s: Sequence) -> None:
    s.num_computed_tokens = s.num_tokens
    bm.register_full_blocks(s)


def test_shared_prefix_blocks_are_reused_and_refcounted():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(10)))  # 2 full blocks + 2 tokens
    assert bm.allocate_prompt(a, 100) == 10
    compute_all(bm, a)
    b = seq(list(range(8)) + [99, 98, 97])
    assert bm.allocate_prompt(b, 100) == 3  # 8 tokens came from the cache
    assert b.block_table[:2] == a.block_table[:2]
    assert [bm.blocks[i].ref_count for i in a.block_table[:2]] == [2, 2]
    bm.free_sequence(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    bm.free_sequence(b)
    assert bm.num_free == 8


def test_whole_prompt_cached_still_computes_last_token():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(8)))
    bm.allocate_prompt(a, 100)
    compute_all(bm, a)
    bm.free_sequence(a)
    b = seq(list(range(8)))
    # Both blocks are cached, but logits need at least one computed token.
    assert bm.allocate_prompt(b, 100) == 4
    assert b.num_computed_tokens == 4


def test_freed_prefix_survives_until_its_blocks_are_reused():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq(list(range(9)))
    bm.allocate_prompt(a, 100)
    compute_all(bm, a)
    bm.free_sequence(a)
    # A different prompt taking every block evicts the cached prefix.
    c = seq([50 + i for i in range(16)])
    assert bm.allocate_prompt(c, 100) == 16
    bm.free_sequence(c)
    b = seq(list(range(9)))
    assert bm.allocate_prompt(b, 100) == 9


def test_allocation_fails_cleanly_when_full():
    bm = BlockManager(num_blocks=2, block_size=4)
    a = seq(list(range(12)))
    assert bm.allocate_prompt(a, 100) == 0
    assert a.block_table == [] and bm.num_free == 2
    assert bm.allocate_prompt(a, 8) == 8  # a smaller chunk fits
    assert not bm.grow(a, 12)
