"""CUDA graphs for decode steps, one per batch-size bucket.

A decode step of a 7B model launches a few hundred kernels; at batch 1 the GPU
would wait on the CPU between them. A graph captured once per bucket replays the
whole step in one launch. A batch of n sequences runs in the smallest bucket that
holds it, padded with dummy sequences: each pads one token at position 0 that writes
its key to a reserved block no sequence owns, so padding touches nothing real.
The step's inputs are copied into the graph's own tensors (same shapes for every
step of a bucket); the only host synchronisation is reading the sampled tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import torch

from .paged_flex import FlexMetadata, StepShape


def decode_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to `max_batch` (which is always a bucket): small
    batches, where padding costs most, get fine steps."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch]
    buckets += list(range(16, max_batch, 16))
    return sorted(set(buckets) | {max_batch})


def bucket_for(batch: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding `batch` sequences; None past the largest."""
    at = bisect.bisect_left(buckets, batch)
    return buckets[at] if at < len(buckets) else None


def pad_decode(shapes: Sequence[StepShape], token_ids: Sequence[int], bucket: int, pad_block: int
               ) -> tuple[list[StepShape], list[int]]:
    """`shapes` and their tokens padded to `bucket` sequences with dummies (token 0
    at position 0 in `pad_block`)."""
    if any(s.count != 1 for s in shapes):
        raise ValueError("only decode steps (one token per sequence) are padded into graphs")
    padding = bucket - len(shapes)
    if padding < 0:
        raise ValueError(f"{len(shapes)} sequences do not fit a bucket of {bucket}")
    dummy = StepShape(start=0, count=1, block_table=[pad_block])
    return list(shapes) + [dummy] * padding, list(token_ids) + [0] * padding


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, input_ids, positions, meta: FlexMetadata, logits):
        self.graph = graph
        self.input_ids = input_ids
        self.positions = positions
        self.meta = meta
        self.logits = logits


# Runs the model: (input_ids, positions, meta) -> logits of every row.
StepFn = Callable[[torch.Tensor, torch.Tensor, FlexMetadata], torch.Tensor]


class DecodeGraphs:
    """Captures a bucket's graph on its first step, replays it afterwards. Dropped
    (`clear`) whenever the weights or the cache move, since a graph holds addresses."""

    def __init__(self, buckets: Sequence[int], run: StepFn):
        self.buckets = list(buckets)
        self.run = run
        self._graphs: dict[int, _Captured] = {}
        self._pool = None

    def clear(self) -> None:
        self._graphs.clear()
        self._pool = None

    def replay(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: FlexMetadata) -> torch.Tensor:
        """Logits [bucket, vocab] for a padded decode batch (its metadata built for
        the bucket's padded shapes)."""
        bucket = input_ids.shape[0]
        captured = self._graphs.get(bucket)
        if captured is None:
            captured = self._graphs[bucket] = self._capture(input_ids, positions, meta)
        else:
            captured.input_ids.copy_(input_ids, non_blocking=True)
            captured.positions.copy_(positions, non_blocking=True)
            captured.meta.copy_(meta)
        captured.graph.replay()
        return captured.logits

    def _capture(self, input_ids, positions, meta: FlexMetadata) -> _Captured:
        # The first step runs eagerly (compiling flex attention for this shape, and
        # warming cuBLAS) on a side stream, as capture requires; its inputs become
        # the graph's static inputs.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.run(input_ids, positions, meta)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self.run(input_ids, positions, meta)
        self._pool = graph.pool()
        return _Captured(graph, input_ids, positions, meta, logits)
