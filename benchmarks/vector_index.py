"""Document-library search: the sqlite-vec index (as the document_library tool
opens it, one connection per search) side by side with exact cosine search in
numpy over the same vectors held in memory, at several library sizes.

    python benchmarks/vector_index.py [--dim 384] [--k 5] [--queries 50]

Vectors are random unit vectors of MiniLM's size; both searches are exact (vec0
scans), so their top-k must agree, which is checked. Prints p50 in ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tramontane.agents.vector_index import VectorIndex


def unit(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'chunks':>8} {'insert s':>9} {'sqlite-vec p50 ms':>18} {'numpy p50 ms':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (1_000, 10_000, 50_000):
            vectors = unit(size, args.dim, rng)
            index = VectorIndex(Path(tmp) / f"{size}.sqlite", args.dim)
            started = time.perf_counter()
            index.add(list(range(1, size + 1)), vectors)
            inserted = time.perf_counter() - started
            vec_ms, numpy_ms = [], []
            for query in unit(args.queries, args.dim, rng):
                started = time.perf_counter()
                found = index.search(query, args.k)
                vec_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                best = np.argsort(-(vectors @ query))[: args.k] + 1
                numpy_ms.append((time.perf_counter() - started) * 1000)
                assert [i for i, _ in found] == best.tolist(), "the two searches disagree"
            print(f"{size:>8} {inserted:>9.2f} {statistics.median(vec_ms):>18.2f} {statistics.median(numpy_ms):>13.2f}")


if __name__ == "__main__":
    main()
