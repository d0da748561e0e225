"""The draw at the end of sampling: the right distribution, never a token of
probability 0, and seeded rows independent of the rest of the batch."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tramontane.engine.sampler import _draw


def _rows(n: int, seed: int | None = None) -> list[SimpleNamespace]:
    return [SimpleNamespace(generator=None if seed is None else torch.Generator().manual_seed(seed)) for _ in range(n)]


def test_draws_follow_the_distribution_and_skip_impossible_tokens():
    probs = torch.zeros(40_000, 1000)
    probs[:, [3, 500, 999]] = torch.tensor([0.2, 0.5, 0.3])
    counts = torch.bincount(_draw(probs, _rows(40_000)), minlength=1000) / 40_000
    assert counts.nonzero().flatten().tolist() == [3, 500, 999]
    # Three standard deviations of a binomial proportion over 40,000 draws: < 0.008.
    assert torch.allclose(counts[[3, 500, 999]], torch.tensor([0.2, 0.5, 0.3]), atol=0.008)


def test_a_certain_token_is_always_drawn_wherever_it_lies():
    for token in (0, 7, 9):
        probs = torch.zeros(100, 10)
        probs[:, token] = 1.0
        assert set(_draw(probs, _rows(100)).tolist()) == {token}


def test_a_seeded_row_draws_the_same_whatever_shares_its_batch():
    probs = torch.full((1, 50), 1 / 50)
    alone = _draw(probs, _rows(1, seed=11))
    batch = torch.cat([torch.full((5, 50), 1 / 50), probs])
    shared = _draw(batch, _rows(5) + _rows(1, seed=11))
    assert shared[-1] == alone[0]
