"""Libraries' vector index in the shared database, for gateways that share one
PostgreSQL: every gateway sees every library, whichever one indexed it.

The embeddings are rows of `library_vectors` (float32, unit length), written in
the upload's own transaction, and go with their chunks (ON DELETE CASCADE). A
search is exact: each gateway keeps the matrix of every library it searches in
memory and scores the query against all of it (one matrix-vector product, see
docs/scale.md for its cost). Before each search the gateway reads the library's
`vectors_version`, which every upload and deletion bumps in its own transaction
(one primary-key read); when it moved, the gateway brings its copy up to date:
the rows added since (chunk ids only grow), and the surviving ids when some were
deleted. So a document uploaded or deleted through any gateway is found, or no
longer found, by the next search on every gateway.

The size bound: a gateway holds 4 x dim bytes per chunk of the libraries it
searched (1.5 KiB at 384 dimensions: 150 MB for 100,000 chunks, and up to a
quarter more as room to append), least recently searched libraries evicted past
`budget_bytes`; the library being searched is always kept. A library first
searched on a gateway is read whole from the database (2 to 9 s per 100,000
chunks on this project's shared machine). Past a few million chunks per library,
an approximate index (pgvector's HNSW) is the tool; this path stays exact.
Calls block: run them in a worker thread."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..store import Store
from .models import ChunkVectorRow, LibraryRow

DEFAULT_BUDGET_BYTES = 2 << 30  # 2 GiB: about 1.4 million chunks of 384 dimensions


def unit_rows(ids: Sequence[int], vectors: np.ndarray, library_id: str) -> list[ChunkVectorRow]:
    """The rows that index `vectors` (one per chunk id), for the caller's session."""
    matrix = _unit(np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1))
    return [
        ChunkVectorRow(chunk_id=i, library_id=library_id, embedding=row.astype("<f4").tobytes())
        for i, row in zip(ids, matrix, strict=True)
    ]


def changed(session: Session, library_id: str) -> None:
    """Marks the library's vectors as changed, in the session that changes them."""
    bump = update(LibraryRow).where(LibraryRow.id == library_id)
    session.execute(bump.values(vectors_version=LibraryRow.vectors_version + 1))


@dataclass
class _Matrix:
    """A library's rows: the first `size` of buffers with room to grow, so that
    new rows are appended in place, not by copying the whole matrix. A search
    reads views of the first `size` rows, which later appends never touch."""

    id_buffer: np.ndarray  # int64, ascending
    buffer: np.ndarray  # float32 (capacity, dim), unit rows
    size: int
    version: int = -1  # the library's vectors_version it reflects

    @classmethod
    def empty(cls, dim: int) -> _Matrix:
        return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float32), 0)

    @property
    def ids(self) -> np.ndarray:
        return self.id_buffer[: self.size]

    @property
    def vectors(self) -> np.ndarray:
        return self.buffer[: self.size]

    @property
    def nbytes(self) -> int:
        return self.id_buffer.nbytes + self.buffer.nbytes

    def appended(self, ids: np.ndarray, vectors: np.ndarray) -> _Matrix:
        size = self.size + len(ids)
        id_buffer, buffer = self.id_buffer, self.buffer
        if size > len(buffer):  # a quarter more room than needed, so appends stay cheap
            capacity = size + size // 4
            id_buffer = np.resize(self.ids, capacity)
            buffer = np.empty((capacity, self.buffer.shape[1]), np.float32)
            buffer[: self.size] = self.vectors
        id_buffer[self.size : size] = ids
        buffer[self.size : size] = vectors
        return _Matrix(id_buffer, buffer, size, self.version)

    def kept(self, present: np.ndarray) -> _Matrix:
        keep = np.isin(self.ids, present)
        return _Matrix(self.ids[keep], np.ascontiguousarray(self.vectors[keep]), int(keep.sum()), self.version)


class SharedIndex:
    """This gateway's copies of the libraries' matrices."""

    def __init__(self, store: Store, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.store = store
        self.budget_bytes = budget_bytes
        self._matrices: OrderedDict[str, _Matrix] = OrderedDict()
        self._lock = threading.Lock()  # searches run in worker threads

    def search(self, library_id: str, vector: np.ndarray, dim: int, k: int) -> list[tuple[int, float]]:
        """The `k` nearest chunks of the library: (id, cosine distance), nearest first."""
        with self._lock:
            matrix = self._fresh(library_id, dim)
        if len(matrix.ids) == 0 or k <= 0:
            return []
        scores = matrix.vectors @ _unit(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(matrix.ids[i]), float(1.0 - scores[i])) for i in top]

    def forget(self, library_id: str) -> None:
        with self._lock:
            self._matrices.pop(library_id, None)

    def cached_bytes(self) -> int:
        with self._lock:
            return sum(m.nbytes for m in self._matrices.values())

    def _fresh(self, library_id: str, dim: int) -> _Matrix:
        """The library's matrix as the database has it now, from what this gateway
        already holds plus the rows added since; kept, and others evicted past the budget."""
        held = self._matrices.pop(library_id, None) or _Matrix.empty(dim)
        where = ChunkVectorRow.library_id == library_id
        with self.store.session() as session:
            version = session.scalar(select(LibraryRow.vectors_version).where(LibraryRow.id == library_id))
            if version is not None and version == held.version:
                self._matrices[library_id] = held
                return held
            # Read before the rows: a change committed meanwhile bumps it again.
            held.version = -1 if version is None else version
            count, newest = session.execute(select(func.count(), func.max(ChunkVectorRow.chunk_id)).where(where)).one()
            held_newest = int(held.ids[-1]) if len(held.ids) else -1
            if count != len(held.ids) or (newest is not None and newest != held_newest):
                rows = session.execute(
                    select(ChunkVectorRow.chunk_id, ChunkVectorRow.embedding)
                    .where(where, ChunkVectorRow.chunk_id > held_newest)
                    .order_by(ChunkVectorRow.chunk_id)
                ).all()
                added = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
                held = held.appended(np.fromiter((r[0] for r in rows), np.int64, len(rows)), added)
                if held.size != count:  # some were deleted: keep the rows still there
                    present = np.fromiter(session.scalars(select(ChunkVectorRow.chunk_id).where(where)), np.int64)
                    held = held.kept(present)
        self._matrices[library_id] = held
        total = sum(m.nbytes for m in self._matrices.values())
        while total > self.budget_bytes and len(self._matrices) > 1:
            _, evicted = self._matrices.popitem(last=False)
            total -= evicted.nbytes
        return held


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)
