"""A library's index at 100,000 chunks, on each path: the sqlite-vec file (the
embedded default) and the shared index in PostgreSQL (every gateway's path when
the store is PostgreSQL), each against an exact numpy ranking of the same
vectors: recall@10 and query latency.

    python benchmarks/library_index.py --database-url postgresql+psycopg://... \
        [--chunks 100000] [--dim 384] [--queries 50]

The database must be empty or a throwaway one: the benchmark creates a workspace,
a library and its chunks there. Vectors are random (MiniLM's 384 dimensions);
both paths are exact scans, so recall@10 should be 1.0, which is what is checked.
For the shared path it reports the first search on a gateway (the whole matrix
read from the database), then warm searches (each one reads the library's
vectors_version first, as every search does), then a search right after 100 chunks were
added through another gateway. Prints medians and p95 in ms, with the counts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from tramontane.agents.models import ChunkRow, DocumentRow, LibraryRow
from tramontane.agents.shared_index import SharedIndex, changed, unit_rows
from tramontane.agents.vector_index import VectorIndex
from tramontane.store import Store, open_store
from tramontane.tenancy import Capability, Tenancy

K = 10


def unit(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def fill_database(store: Store, home: Path, vectors: np.ndarray, first_id: int) -> tuple[str, list[int]]:
    """A library whose chunks carry `vectors`, written as uploads write them."""
    tenancy = Tenancy(store, home=home, pepper=b"benchmark-pepper-0123456789abcdef")
    workspace, _ = tenancy.create_tenant(f"bench-{time.monotonic_ns()}", frozenset({Capability.INFERENCE}))
    with store.write_session() as session:
        library = LibraryRow(workspace_id=workspace, name="bench", chunk_size=512, embedding_model="m")
        session.add(library)
        session.flush()
        document = DocumentRow(workspace_id=workspace, library_id=library.id, name="bench.txt", mime_type=None,
                               extension="txt", size=0, hash="", text="", tokens=0)
        session.add(document)
        session.flush()
        library_id, document_id = library.id, document.id
    ids = list(range(first_id, first_id + len(vectors)))
    for start in range(0, len(ids), 10_000):
        batch = ids[start : start + 10_000]
        with store.write_session() as session:
            session.execute(insert(ChunkRow), [
                {"id": i, "workspace_id": workspace, "document_id": document_id, "library_id": library_id,
                 "chunk_index": i - first_id, "text": f"chunk {i}"} for i in batch
            ])
            session.add_all(unit_rows(batch, vectors[start : start + len(batch)], library_id))
    return library_id, ids


def recall(found: list[int], truth: list[int]) -> float:
    return len(set(found) & set(truth)) / len(truth)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = unit(args.chunks, args.dim, rng)
    queries = unit(args.queries, args.dim, rng)
    with tempfile.TemporaryDirectory() as tmp:
        ids = list(range(1, args.chunks + 1))
        truths = [[ids[i] for i in np.argsort(-(vectors @ q))[:K]] for q in queries]

        # The embedded default: a sqlite-vec file.
        index = VectorIndex(Path(tmp) / "library.sqlite", args.dim)
        started = time.perf_counter()
        for start in range(0, args.chunks, 10_000):
            index.add(ids[start : start + 10_000], vectors[start : start + 10_000])
        print(f"sqlite-vec: {args.chunks} chunks indexed in {time.perf_counter() - started:.1f} s")
        timings, recalls = [], []
        for query, truth in zip(queries, truths, strict=True):
            started = time.perf_counter()
            found = [i for i, _ in index.search(query, K)]
            timings.append((time.perf_counter() - started) * 1000)
            recalls.append(recall(found, truth))
        print(f"sqlite-vec: recall@{K} {statistics.mean(recalls):.3f}, query p50 {statistics.median(timings):.1f} ms, "
              f"p95 {p95(timings):.1f} ms (n={len(timings)})")

        # The shared path: rows of PostgreSQL, searched in each gateway's memory.
        store = open_store(args.database_url)
        first_id = 10_000_000_000
        started = time.perf_counter()
        library_id, db_ids = fill_database(store, Path(tmp), vectors, first_id)
        print(f"shared: {args.chunks} chunks written in {time.perf_counter() - started:.1f} s")
        shared = SharedIndex(store)
        started = time.perf_counter()
        first = [i - first_id + 1 for i, _ in shared.search(library_id, queries[0], args.dim, K)]
        cold = time.perf_counter() - started
        timings, recalls = [], [recall(first, truths[0])]
        for query, truth in zip(queries, truths, strict=True):
            started = time.perf_counter()
            found = [i - first_id + 1 for i, _ in shared.search(library_id, query, args.dim, K)]
            timings.append((time.perf_counter() - started) * 1000)
            recalls.append(recall(found, truth))
        print(f"shared: first search on a gateway {cold:.2f} s ({shared.cached_bytes() / 2**20:.0f} MiB held)")
        print(f"shared: recall@{K} {statistics.mean(recalls):.3f}, warm query p50 {statistics.median(timings):.1f} ms, "
              f"p95 {p95(timings):.1f} ms (n={len(timings)})")
        # 100 chunks added through another gateway: the next search takes them in.
        other = open_store(args.database_url)
        with other.write_session() as session:
            document_id = session.get(ChunkRow, db_ids[0]).document_id
            workspace = session.get(ChunkRow, db_ids[0]).workspace_id
            new_ids = list(range(first_id + args.chunks, first_id + args.chunks + 100))
            session.execute(insert(ChunkRow), [
                {"id": i, "workspace_id": workspace, "document_id": document_id, "library_id": library_id,
                 "chunk_index": i - first_id, "text": f"chunk {i}"} for i in new_ids
            ])
            session.add_all(unit_rows(new_ids, unit(100, args.dim, rng), library_id))
            changed(session, library_id)
        started = time.perf_counter()
        shared.search(library_id, queries[0], args.dim, K)
        print(f"shared: search after 100 chunks added elsewhere {(time.perf_counter() - started) * 1000:.1f} ms")
        other.close()
        store.close()


if __name__ == "__main__":
    main()
