"""A library's vector index: a sqlite-vec `vec0` table in its own SQLite file.

The file sits in the workspace's directory, so erasing the workspace erases it.
It is opened through apsw, which bundles an SQLite that loads extensions on any
Python build (CPython's own `sqlite3` module may be compiled without that).
Distances are cosine distances; row ids are the chunks' ids in the store.
Calls block: run them in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import apsw
import numpy as np
import sqlite_vec


class VectorIndex:
    def __init__(self, path: Path, dim: int):
        self.path = path
        self.dim = dim

    @contextmanager
    def _connect(self) -> Iterator[apsw.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = apsw.Connection(str(self.path))
        try:
            connection.enable_load_extension(True)
            connection.load_extension(sqlite_vec.loadable_path())
            connection.enable_load_extension(False)
            columns = f"embedding float[{self.dim}] distance_metric=cosine"
            connection.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING vec0({columns})")
            yield connection
        finally:
            connection.close()

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        rows = [(i, np.asarray(v, dtype="<f4").tobytes()) for i, v in zip(ids, vectors, strict=True)]
        with self._connect() as connection, connection:  # one transaction
            connection.executemany("INSERT INTO chunks(rowid, embedding) VALUES (?, ?)", rows)

    def remove(self, ids: Sequence[int]) -> None:
        with self._connect() as connection, connection:
            connection.executemany("DELETE FROM chunks WHERE rowid = ?", [(i,) for i in ids])

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The `k` nearest chunks: (id, cosine distance), nearest first."""
        if not self.path.exists():
            return []
        query = np.asarray(vector, dtype="<f4").tobytes()
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT rowid, distance FROM chunks WHERE embedding MATCH ? AND k = ? ORDER BY distance", (query, k)
            )
            return [(int(rowid), float(distance)) for rowid, distance in rows]

    def items(self) -> list[tuple[int, np.ndarray]]:
        """Every (id, vector) indexed: to move a library into the shared index."""
        if not self.path.exists():
            return []
        with self._connect() as connection:
            rows = connection.execute("SELECT rowid, embedding FROM chunks")
            return [(int(rowid), np.frombuffer(blob, dtype="<f4")) for rowid, blob in rows]

    def drop(self) -> None:
        self.path.unlink(missing_ok=True)
