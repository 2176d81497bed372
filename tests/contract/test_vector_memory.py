"""The VectorMemory contract, run against embedded Chroma and a real ``chroma run`` server."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.errors import BackendUnavailable, ConfigError, StorageError
from engine.ports import VectorItem, VectorMemory
from storage.vector.chroma import ChromaVectorMemory, collection_name
from tests.fakes.chroma_server import ChromaServer

DIM = 32

MemoryFactory = Callable[[], ChromaVectorMemory]


@pytest.fixture(scope="session")
def chroma_server() -> Iterator[ChromaServer]:
    with ChromaServer() as server:
        yield server


@pytest.fixture(params=["embedded", "http"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryFactory:
    """Makes fresh, unstarted stores over the same data (one data set per test)."""
    if request.param == "embedded":
        path = tmp_path / "chroma"
        return lambda: ChromaVectorMemory.embedded(path)
    server: ChromaServer = request.getfixturevalue("chroma_server")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return lambda: ChromaVectorMemory.http(server.url, collection_prefix=prefix)


@pytest.fixture
async def memory(backend: MemoryFactory) -> AsyncIterator[ChromaVectorMemory]:
    store = backend()
    await store.start()
    yield store
    await store.aclose()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


def unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.normal(size=(n, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def items(vectors: np.ndarray, prefix: str = "m") -> list[VectorItem]:
    return [
        VectorItem(id=f"{prefix}{i}", text=f"text {prefix}{i}", embedding=v.tolist(), metadata={"n": i})
        for i, v in enumerate(vectors)
    ]


def scope() -> str:
    return f"discord:{uuid.uuid4().int % 10**12}"


def test_has_every_method_of_the_port() -> None:
    store = ChromaVectorMemory.embedded("/nonexistent-until-start")
    for name in (
        "start",
        "aclose",
        "ping",
        "add",
        "query",
        "update_metadata",
        "delete",
        "drop_scope",
        "count",
    ):
        assert inspect.iscoroutinefunction(getattr(store, name)), name
        assert hasattr(VectorMemory, name)


async def test_update_metadata_merges_keys_and_keeps_embedding_and_text(
    memory: ChromaVectorMemory, rng: np.random.Generator
) -> None:
    user, other = scope(), scope()
    vectors = unit(rng, 5)
    stored = [
        VectorItem(id=f"m{i}", text=f"text m{i}", embedding=v.tolist(), metadata={"n": i, "mentions": 1})
        for i, v in enumerate(vectors)
    ]
    await memory.add(user, stored)
    await memory.add(other, stored[:1])
    await memory.update_metadata(
        user, {"m1": {"mentions": 3, "superseded_by": "m4"}, "m2": {"mentions": 2}, "absent": {"n": 9}}
    )
    [before] = await memory.get_items(user, ["m0"])
    after = {item.id: item for item in await memory.get_items(user, ["m1", "m2", "absent"])}
    assert sorted(after) == ["m1", "m2"]  # an id not stored is not created
    assert after["m1"].metadata == {"n": 1, "mentions": 3, "superseded_by": "m4"}
    assert after["m2"].metadata == {"n": 2, "mentions": 2}
    assert before.metadata == {"n": 0, "mentions": 1}
    for i, item in ((1, after["m1"]), (2, after["m2"])):
        assert item.text == f"text m{i}"
        np.testing.assert_allclose(item.embedding, vectors[i], rtol=1e-5, atol=1e-6)
    # the nearest neighbour of its own vector is still itself, with the new metadata
    [hit] = await memory.query(user, vectors[1].tolist(), 1)
    assert (hit.id, hit.metadata["mentions"]) == ("m1", 3)
    # another scope's item with the same id is untouched; an unknown scope is a no-op
    [untouched] = await memory.get_items(other, ["m0"])
    assert untouched.metadata == {"n": 0, "mentions": 1}
    await memory.update_metadata(scope(), {"m1": {"n": 5}})


async def test_query_returns_own_vector_first_with_exact_similarities(
    memory: ChromaVectorMemory, rng: np.random.Generator
) -> None:
    user = scope()
    vectors = unit(rng, 40)
    await memory.add(user, items(vectors))
    assert await memory.count(user) == 40

    hits = await memory.query(user, vectors[7].tolist(), k=5)

    assert len(hits) == 5
    assert hits[0].id == "m7"
    assert hits[0].text == "text m7"
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert hits[0].metadata == {"n": 7}
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True)
    expected = {f"m{i}": float(vectors[i] @ vectors[7]) for i in range(40)}
    best = sorted(expected, key=expected.__getitem__, reverse=True)[:5]
    assert [h.id for h in hits] == best
    for hit in hits:
        assert hit.similarity == pytest.approx(expected[hit.id], abs=1e-4)


async def test_opposite_vector_has_similarity_minus_one(memory: ChromaVectorMemory) -> None:
    user = scope()
    v = np.zeros(DIM)
    v[0] = 1.0
    await memory.add(user, [VectorItem("far", "far", (-v).tolist()), VectorItem("near", "near", v.tolist())])
    hits = await memory.query(user, v.tolist(), k=2)
    assert [h.id for h in hits] == ["near", "far"]
    assert hits[1].similarity == pytest.approx(-1.0, abs=1e-4)


async def test_k_larger_than_the_scope_returns_everything(
    memory: ChromaVectorMemory, rng: np.random.Generator
) -> None:
    user = scope()
    vectors = unit(rng, 3)
    await memory.add(user, items(vectors))
    hits = await memory.query(user, vectors[0].tolist(), k=100)
    assert sorted(h.id for h in hits) == ["m0", "m1", "m2"]
    assert await memory.query(user, vectors[0].tolist(), k=0) == []


async def test_unknown_scope_is_empty(memory: ChromaVectorMemory, rng: np.random.Generator) -> None:
    user = scope()
    assert await memory.query(user, unit(rng)[0].tolist(), k=5) == []
    assert await memory.count(user) == 0
    await memory.delete(user, ["nothing"])
    await memory.drop_scope(user)
    assert await memory.count(user) == 0


async def test_add_replaces_by_id(memory: ChromaVectorMemory, rng: np.random.Generator) -> None:
    user = scope()
    old, new, other = unit(rng, 3)
    await memory.add(user, [VectorItem("a", "old text", old.tolist(), {"v": 1})])
    await memory.add(user, [VectorItem("b", "other", other.tolist())])
    await memory.add(user, [VectorItem("a", "new text", new.tolist(), {"v": 2})])

    assert await memory.count(user) == 2
    hits = await memory.query(user, new.tolist(), k=1)
    assert (hits[0].id, hits[0].text, dict(hits[0].metadata)) == ("a", "new text", {"v": 2})
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)


async def test_same_id_twice_in_one_call_keeps_the_last(
    memory: ChromaVectorMemory, rng: np.random.Generator
) -> None:
    user = scope()
    first, second = unit(rng, 2)
    await memory.add(
        user, [VectorItem("a", "first", first.tolist()), VectorItem("a", "second", second.tolist())]
    )
    assert await memory.count(user) == 1
    assert (await memory.query(user, second.tolist(), k=1))[0].text == "second"


async def test_metadata_types_round_trip(memory: ChromaVectorMemory, rng: np.random.Generator) -> None:
    user = scope()
    meta = {"kind": "fact", "count": 3, "importance": 0.75, "pinned": True}
    await memory.add(user, [VectorItem("a", "x", unit(rng)[0].tolist(), meta)])
    (hit,) = await memory.query(user, unit(rng)[0].tolist(), k=1)
    assert dict(hit.metadata) == meta
    assert type(hit.metadata["count"]) is int
    assert type(hit.metadata["pinned"]) is bool
    assert type(hit.metadata["importance"]) is float


async def test_delete(memory: ChromaVectorMemory, rng: np.random.Generator) -> None:
    user = scope()
    vectors = unit(rng, 5)
    await memory.add(user, items(vectors))
    await memory.delete(user, ["m1", "m3", "not-there"])
    await memory.delete(user, [])
    assert await memory.count(user) == 3
    hits = await memory.query(user, vectors[1].tolist(), k=10)
    assert sorted(h.id for h in hits) == ["m0", "m2", "m4"]


async def test_drop_scope_leaves_other_scopes(memory: ChromaVectorMemory, rng: np.random.Generator) -> None:
    alice, bob = scope(), scope()
    vectors = unit(rng, 4)
    await memory.add(alice, items(vectors))
    await memory.add(bob, items(vectors))
    await memory.drop_scope(alice)
    assert await memory.count(alice) == 0
    assert await memory.query(alice, vectors[0].tolist(), k=3) == []
    assert await memory.count(bob) == 4
    # the scope can be written again after a drop
    await memory.add(alice, items(vectors[:1]))
    assert await memory.count(alice) == 1


async def test_queries_never_cross_scopes(memory: ChromaVectorMemory, rng: np.random.Generator) -> None:
    alice, bob = scope(), scope()
    query = unit(rng)[0]
    # alice holds the query vector itself; bob holds only vectors pointing away from it
    await memory.add(alice, [VectorItem("same", "alice's secret", query.tolist())])
    away = unit(rng, 6)
    away = np.array([v if v @ query < 0 else -v for v in away])
    await memory.add(bob, items(away, prefix="bob"))
    # the same id in both scopes stays two separate items
    await memory.add(bob, [VectorItem("shared", "bob's", (-query).tolist())])
    await memory.add(alice, [VectorItem("shared", "alice's", query.tolist())])

    bob_hits = await memory.query(bob, query.tolist(), k=50)
    assert len(bob_hits) == 7
    assert all(h.text != "alice's secret" and h.text != "alice's" for h in bob_hits)
    assert all(h.similarity < 0.01 for h in bob_hits)

    alice_hits = await memory.query(alice, query.tolist(), k=50)
    assert sorted(h.id for h in alice_hits) == ["same", "shared"]

    await memory.delete(bob, ["shared"])
    assert await memory.count(alice) == 2
    assert await memory.count(bob) == 6


async def test_scopes_with_unusual_characters(memory: ChromaVectorMemory, rng: np.random.Generator) -> None:
    weird = ["guild:slack:T0/Ü ✓", "x" * 600, "a", ""]
    vectors = unit(rng, len(weird))
    for i, name in enumerate(weird):
        await memory.add(name, [VectorItem(f"id{i}", name, vectors[i].tolist())])
    for i, name in enumerate(weird):
        hits = await memory.query(name, vectors[i].tolist(), k=10)
        assert [h.id for h in hits] == [f"id{i}"]


async def test_data_survives_a_reopen(backend: MemoryFactory, rng: np.random.Generator) -> None:
    user = scope()
    vectors = unit(rng, 10)
    first = backend()
    await first.start()
    await first.add(user, items(vectors))
    await first.aclose()

    second = backend()
    await second.start()
    try:
        assert await second.count(user) == 10
        hits = await second.query(user, vectors[4].tolist(), k=1)
        assert hits[0].id == "m4"
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    finally:
        await second.aclose()


async def test_wrong_dimension_is_a_storage_error(
    memory: ChromaVectorMemory, rng: np.random.Generator
) -> None:
    user = scope()
    await memory.add(user, items(unit(rng, 2)))
    with pytest.raises(StorageError):
        await memory.add(user, [VectorItem("x", "x", [1.0, 0.0])])
    with pytest.raises(StorageError):
        await memory.query(user, [1.0, 0.0], k=1)


async def test_ping(memory: ChromaVectorMemory) -> None:
    await memory.ping()


async def test_not_started_is_a_storage_error(backend: MemoryFactory) -> None:
    with pytest.raises(StorageError):
        await backend().count("anyone")


def test_collection_names_follow_chromas_rules() -> None:
    for name in [collection_name(s) for s in ["", "discord:1", "x" * 5000, "é/?*"]]:
        assert 3 <= len(name) <= 512
        assert name[0].isalnum() and name[-1].isalnum()
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert collection_name("discord:1") != collection_name("discord:2")


# --- HTTP only ---------------------------------------------------------------------------


async def test_a_new_client_sees_the_data_and_drops_of_another(
    chroma_server: ChromaServer, rng: np.random.Generator
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    user = scope()
    vectors = unit(rng, 3)
    a = ChromaVectorMemory.http(chroma_server.url, collection_prefix=prefix)
    b = ChromaVectorMemory.http(chroma_server.url, collection_prefix=prefix)
    await a.start()
    await b.start()
    try:
        await a.add(user, items(vectors))
        assert await b.count(user) == 3
        # b drops the scope while a still holds a handle on its collection
        await b.drop_scope(user)
        assert await a.count(user) == 0
        assert await a.query(user, vectors[0].tolist(), k=3) == []
        await a.add(user, items(vectors[:1]))
        assert await b.count(user) == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_unreachable_server_names_chroma_url() -> None:
    store = ChromaVectorMemory.http("http://user:hunter2@127.0.0.1:1", connect_timeout_s=1.0)
    with pytest.raises(BackendUnavailable) as info:
        await store.start()
    assert info.value.variable == "CHROMA_URL"
    assert "CHROMA_URL" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_server_going_away_is_backend_unavailable(rng: np.random.Generator) -> None:
    async with ChromaServer() as server:
        store = ChromaVectorMemory.http(server.url, connect_timeout_s=1.0)
        await store.start()
        user = scope()
        await store.add(user, items(unit(rng, 2)))
        await store.ping()
        await server.__aexit__(None, None, None)
        try:
            with pytest.raises(BackendUnavailable) as info:
                await store.ping()
            assert info.value.variable == "CHROMA_URL"
            with pytest.raises(BackendUnavailable):
                await store.query(user, unit(rng)[0].tolist(), k=1)
        finally:
            await store.aclose()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8000", "http://127.0.0.1:8000/some/path", "not a url"])
def test_malformed_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        ChromaVectorMemory.http(url)
    assert info.value.variable == "CHROMA_URL"
