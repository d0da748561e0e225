"""Document libraries: documents are chunked, embedded with the server's embedding
model and indexed per library; `search` finds the passages nearest a query.

The index is a sqlite-vec file per library under the home (vector_index.py, the
embedded default) or, when the store is PostgreSQL, rows of the database that
every gateway sharing it searches (shared_index.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from ..docai import DocumentReader
from ..docai.extract import require_text
from ..errors import TooLarge
from ..inference.registry import EmbeddingEntry, ModelRegistry
from ..store import Store
from ..store.types import utcnow
from ..tenancy import Principal, get_owned, not_found, owned
from ..tenancy.directory import workspace_dir
from .documents import DEFAULT_CHUNK_SIZE, MAX_DOCUMENT_BYTES, extension_of, passages
from .documents import Passage as Chunk
from .models import ChunkRow, ChunkVectorRow, DocumentRow, LibraryRow
from .shared_index import SharedIndex, changed, unit_rows
from .vector_index import VectorIndex


@dataclass(frozen=True)
class Passage:
    """A chunk found by a search, with what a citation needs."""

    library_id: str
    document_id: str
    document_name: str
    chunk_index: int
    text: str
    score: float  # cosine similarity
    page: int | None = None  # 1-based, in paged documents (PDF)


class Libraries:
    def __init__(
        self,
        store: Store,
        registry: ModelRegistry,
        home: Path,
        reader: DocumentReader,
        *,
        shared: SharedIndex | None = None,
    ):
        """`shared`: the index in the database; by default, whenever the store is
        PostgreSQL (which several gateways may share)."""
        self._store = store
        self._registry = registry
        self._home = home
        self._reader = reader
        self._shared = shared if shared is not None or store.is_sqlite else SharedIndex(store)

    def _index(self, library: LibraryRow, entry: EmbeddingEntry) -> VectorIndex:
        path = workspace_dir(self._home, library.workspace_id) / "libraries" / f"{library.id}.sqlite"
        return VectorIndex(path, entry.model.dim)

    async def _embed(self, entry: EmbeddingEntry, texts: list[str]) -> tuple[np.ndarray, int]:
        async with entry.lock:  # one forward pass at a time, as /v1/embeddings does
            vectors, counts = await anyio.to_thread.run_sync(entry.model.embed, texts)
        return vectors.numpy(), sum(counts)

    # -- libraries

    def create(self, principal: Principal, name: str, description: str | None, chunk_size: int | None) -> LibraryRow:
        entry = self._registry.default_embedding()
        with self._store.write_session() as session:
            library = LibraryRow(
                workspace_id=principal.workspace_id,
                name=name,
                description=description,
                chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                embedding_model=entry.name,
            )
            session.add(library)
        return library

    def list(self, principal: Principal) -> list[LibraryRow]:
        with self._store.session() as session:
            return list(session.scalars(owned(LibraryRow, principal).order_by(LibraryRow.created_at)))

    def get(self, principal: Principal, library_id: str) -> LibraryRow:
        with self._store.session() as session:
            return get_owned(session, LibraryRow, library_id, principal, "library")

    def stats(self, library_id: str) -> tuple[int, int]:
        """Number of documents and their total size in bytes."""
        with self._store.session() as session:
            count, size = session.execute(
                select(func.count(DocumentRow.id), func.coalesce(func.sum(DocumentRow.size), 0)).where(
                    DocumentRow.library_id == library_id
                )
            ).one()
        return int(count), int(size)

    def delete(self, principal: Principal, library_id: str) -> LibraryRow:
        with self._store.write_session() as session:
            library = get_owned(session, LibraryRow, library_id, principal, "library")
            session.delete(library)  # documents cascade; chunks cascade from documents
        path = workspace_dir(self._home, library.workspace_id) / "libraries" / f"{library.id}.sqlite"
        path.unlink(missing_ok=True)
        if self._shared is not None:
            self._shared.forget(library.id)  # its rows went with its chunks
        return library

    # -- documents

    async def upload(
        self, principal: Principal, library_id: str, name: str, content_type: str | None, data: bytes
    ) -> DocumentRow:
        """Extracts (PDF text layers, OCR of scans, DOCX, HTML, text), chunks, embeds
        and indexes the document before answering, so a document is searchable as
        soon as its upload returns."""
        library = self.get(principal, library_id)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise TooLarge(f"Documents are limited to {MAX_DOCUMENT_BYTES} bytes", code="request_too_large")
        read = await self._reader.read(data, name, content_type)
        require_text(read, name)
        chunks = passages(read, library.chunk_size)
        entry = self._registry.embedding(library.embedding_model)
        vectors, tokens = await self._embed(entry, [c.text for c in chunks]) if chunks else (np.zeros((0, entry.model.dim)), 0)
        # The write runs in a worker thread, index included: SQLite's write lock is
        # held until the index is written, and a writer on the event loop waiting
        # for that lock would stall the loop the thread needs to hand it back.
        return await anyio.to_thread.run_sync(
            self._add_document, principal, library, entry, name, content_type, data, read.text, chunks, vectors, tokens
        )

    def _add_document(
        self,
        principal: Principal,
        library: LibraryRow,
        entry: EmbeddingEntry,
        name: str,
        content_type: str | None,
        data: bytes,
        text: str,
        chunks: list[Chunk],
        vectors: np.ndarray,
        tokens: int,
    ) -> DocumentRow:
        with self._store.write_session() as session:
            document = DocumentRow(
                workspace_id=principal.workspace_id,
                library_id=library.id,
                name=name,
                mime_type=content_type,
                extension=extension_of(name),
                size=len(data),
                hash=hashlib.sha256(data).hexdigest(),
                text=text,
                tokens=tokens,
                processed_at=utcnow(),
            )
            session.add(document)
            session.flush()
            rows = [
                ChunkRow(
                    workspace_id=principal.workspace_id,
                    document_id=document.id,
                    library_id=library.id,
                    chunk_index=i,
                    text=chunk.text,
                    page=chunk.page,
                )
                for i, chunk in enumerate(chunks)
            ]
            session.add_all(rows)
            session.flush()
            # Indexed inside the transaction: if indexing fails, the document is not kept.
            if self._shared is not None:
                session.add_all(unit_rows([r.id for r in rows], vectors, library.id))
                changed(session, library.id)
            else:
                self._index(library, entry).add([r.id for r in rows], vectors)
        return document

    def documents(self, principal: Principal, library_id: str) -> list[DocumentRow]:
        library = self.get(principal, library_id)
        with self._store.session() as session:
            query = owned(DocumentRow, principal).where(DocumentRow.library_id == library.id)
            return list(session.scalars(query.order_by(DocumentRow.created_at.desc())))

    def document(self, principal: Principal, library_id: str, document_id: str) -> DocumentRow:
        with self._store.session() as session:
            document = get_owned(session, DocumentRow, document_id, principal, "document")
            if document.library_id != library_id:
                raise not_found("document", document_id)
            return document

    async def delete_document(self, principal: Principal, library_id: str, document_id: str) -> None:
        library = self.get(principal, library_id)
        with self._store.write_session() as session:
            document = get_owned(session, DocumentRow, document_id, principal, "document")
            if document.library_id != library.id:
                raise not_found("document", document_id)
            ids = list(session.scalars(select(ChunkRow.id).where(ChunkRow.document_id == document.id)))
            session.execute(delete(ChunkRow).where(ChunkRow.document_id == document.id))
            session.delete(document)
            if self._shared is not None:  # its vectors go with its chunks
                changed(session, library.id)
        if self._shared is None:  # in the database, the vectors went with their chunks
            entry = self._registry.embedding(library.embedding_model)
            await anyio.to_thread.run_sync(self._index(library, entry).remove, ids)

    # -- search

    def _search_one(self, library: LibraryRow, entry: EmbeddingEntry, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if self._shared is None:
            return self._index(library, entry).search(vector, k)
        self._adopt_file(library, entry)
        return self._shared.search(library.id, vector, entry.model.dim, k)

    def _adopt_file(self, library: LibraryRow, entry: EmbeddingEntry) -> None:
        """Moves a library indexed in a file (before the store was PostgreSQL) into
        the shared index, once, on its first search."""
        index = self._index(library, entry)
        if not index.path.exists():
            return
        try:
            with self._store.write_session() as session:
                chunks = set(session.scalars(select(ChunkRow.id).where(ChunkRow.library_id == library.id)))
                there = set(
                    session.scalars(select(ChunkVectorRow.chunk_id).where(ChunkVectorRow.library_id == library.id))
                )
                items = [(i, v) for i, v in index.items() if i in chunks and i not in there]
                if items:
                    ids, vectors = zip(*items, strict=True)
                    session.add_all(unit_rows(list(ids), np.stack(vectors), library.id))
                    changed(session, library.id)
        except IntegrityError:
            pass  # another gateway moved it at the same time
        index.drop()

    async def search(self, workspace_id: str, library_ids: list[str], query: str, k: int) -> list[Passage]:
        """The `k` passages nearest `query` across the workspace's `library_ids`
        (other workspaces' libraries are skipped as if missing)."""
        with self._store.session() as session:
            libraries = list(
                session.scalars(
                    select(LibraryRow).where(LibraryRow.id.in_(library_ids), LibraryRow.workspace_id == workspace_id)
                )
            )
        found: list[tuple[float, int]] = []
        for library in libraries:
            entry = self._registry.embedding(library.embedding_model)
            vectors, _ = await self._embed(entry, [query])
            hits = await anyio.to_thread.run_sync(self._search_one, library, entry, vectors[0], k)
            found += [(distance, chunk_id) for chunk_id, distance in hits]
        found = sorted(found)[:k]
        if not found:
            return []
        with self._store.session() as session:
            rows = session.execute(
                select(ChunkRow, DocumentRow.name)
                .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
                .where(ChunkRow.id.in_([chunk_id for _, chunk_id in found]))
            ).all()
        by_id = {chunk.id: (chunk, name) for chunk, name in rows}
        passages = []
        for distance, chunk_id in found:
            if chunk_id in by_id:  # a chunk deleted since it was indexed is skipped
                chunk, name = by_id[chunk_id]
                passages.append(
                    Passage(
                        chunk.library_id,
                        chunk.document_id,
                        name,
                        chunk.chunk_index,
                        chunk.text,
                        1.0 - distance,
                        chunk.page,
                    )
                )
        return passages
