"""Libraries across gateways sharing a real PostgreSQL database: the index is rows
of that database, so a document uploaded through one gateway is found by a
search on another, and one deleted is no longer found, each gateway's copy of
the matrix brought up to date before every search. A library indexed in a
sqlite-vec file before the move is taken into the shared index on its first
search. Each gateway is a `Libraries` over its own store, on one home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from tramontane.agents.libraries import Libraries
from tramontane.agents.models import ChunkVectorRow
from tramontane.agents.vector_index import VectorIndex
from tramontane.cli.up import load_models
from tramontane.docai import DocumentReader
from tramontane.inference import ModelRegistry, ModelSpec
from tramontane.inference.registry import default_embedding_model_path
from tramontane.store import Store, open_store
from tramontane.tenancy import Capability, Principal, Tenancy

PARKING = "Visitors park in the underground garage on level -2. The gate code is 4417."
LUNCH = "Lunch is served from noon until 2pm in the cafeteria on the ground floor."
PANCAKES = "Pancakes need flour, eggs and milk. Whisk them and cook on a hot buttered pan."


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return load_models([ModelSpec(str(default_embedding_model_path()), "all-minilm-l6-v2")])


@pytest.fixture
def stores(postgres_url: str) -> Iterator[list[Store]]:
    made = [open_store(postgres_url) for _ in range(2)]
    yield made
    for store in made:
        store.close()


@pytest.fixture
def principal(stores: list[Store], tmp_path: Path) -> Principal:
    tenancy = Tenancy(stores[0], home=tmp_path, pepper=b"test-pepper-0123456789abcdef")
    _, key = tenancy.create_tenant("ws", frozenset({Capability.INFERENCE}))
    return tenancy.authenticate(f"Bearer {key}")


def _gateway(store: Store, registry: ModelRegistry, home: Path) -> Libraries:
    return Libraries(store, registry, home, DocumentReader())


async def _found(libraries: Libraries, principal: Principal, library_id: str, query: str) -> list[str]:
    return [p.text for p in await libraries.search(principal.workspace_id, [library_id], query, 2)]


async def test_every_gateway_sees_every_document(stores, registry, principal, tmp_path: Path) -> None:
    a, b = (_gateway(store, registry, tmp_path) for store in stores)
    library = a.create(principal, "office", None, None)
    parking = await a.upload(principal, library.id, "parking.txt", "text/plain", PARKING.encode())
    assert (await _found(b, principal, library.id, "where do visitors park?"))[0] == PARKING
    # Added through b: a's copy of the matrix takes the new rows in before its search.
    assert (await _found(a, principal, library.id, "where do visitors park?"))[0] == PARKING
    await b.upload(principal, library.id, "lunch.txt", "text/plain", LUNCH.encode())
    await b.upload(principal, library.id, "pancakes.txt", "text/plain", PANCAKES.encode())
    assert (await _found(a, principal, library.id, "when is lunch?"))[0] == LUNCH
    # Deleted through b: gone from a's results at once.
    await b.delete_document(principal, library.id, parking.id)
    assert PARKING not in await _found(a, principal, library.id, "where do visitors park?")
    assert sorted(await _found(a, principal, library.id, "food")) == sorted([LUNCH, PANCAKES])
    # Deleting the library takes its vectors with it.
    b.delete(principal, library.id)
    with stores[0].session() as session:
        assert session.scalar(select(func.count()).select_from(ChunkVectorRow)) == 0
    assert await _found(a, principal, library.id, "food") == []


async def test_the_shared_search_is_exact(stores, registry, principal, tmp_path: Path) -> None:
    """A gateway's copy, kept up to date across uploads and deletions through
    another gateway, ranks as a brute force over the database's rows does."""
    a, b = (_gateway(store, registry, tmp_path) for store in stores)
    library = a.create(principal, "many", None, 64)
    queries = ["garage code", "lunch time", "pancake batter", "badge desk"]
    documents = []
    for n, topic in enumerate([PARKING, LUNCH, PANCAKES, PARKING + " " + LUNCH]):
        text = "\n\n".join(f"Note {n}.{i}: {topic}" for i in range(20)).encode()
        documents.append(await b.upload(principal, library.id, f"{n}.txt", "text/plain", text))
        await _found(a, principal, library.id, queries[n])  # a loads what there is so far
    await b.delete_document(principal, library.id, documents[1].id)
    entry = registry.default_embedding()
    for query in queries:
        vector = entry.model.embed([query])[0][0].numpy()
        with stores[0].session() as session:
            rows = session.execute(select(ChunkVectorRow.chunk_id, ChunkVectorRow.embedding)).all()
        ids = np.array([r[0] for r in rows])
        matrix = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
        scores = matrix @ (vector / np.linalg.norm(vector))
        score_of = dict(zip(ids.tolist(), scores.tolist(), strict=True))
        got = a._shared.search(library.id, vector, entry.model.dim, 10)
        # The ten best scores, each the true score of the chunk returned (near-equal
        # passages may tie, in either order).
        assert np.allclose([1 - d for _, d in got], np.sort(scores)[::-1][:10], atol=1e-5), query
        assert np.allclose([1 - d for _, d in got], [score_of[i] for i, _ in got], atol=1e-5), query
        assert len({i for i, _ in got}) == 10


async def test_a_library_indexed_in_a_file_moves_into_the_database(stores, registry, principal, tmp_path: Path) -> None:
    a = _gateway(stores[0], registry, tmp_path)
    library = a.create(principal, "older", None, None)
    await a.upload(principal, library.id, "parking.txt", "text/plain", PARKING.encode())
    # As it was before the store was PostgreSQL: the vectors in the library's file.
    with stores[0].write_session() as session:
        rows = session.execute(select(ChunkVectorRow.chunk_id, ChunkVectorRow.embedding)).all()
        session.query(ChunkVectorRow).delete()
    dim = registry.default_embedding().model.dim
    index = a._index(library, registry.default_embedding())
    index.add([r[0] for r in rows], np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]))
    assert index.path.exists()
    b = _gateway(stores[1], registry, tmp_path)
    assert (await _found(b, principal, library.id, "where do visitors park?"))[0] == PARKING
    assert not index.path.exists()
    with stores[0].session() as session:
        assert session.scalar(select(func.count()).select_from(ChunkVectorRow)) == len(rows) > 0
    assert VectorIndex(index.path, dim).items() == []
