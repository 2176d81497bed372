"""Hybrid recall: dense and keyword candidates fused by ``engine.memory.fuse``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.memory import (
    FusionWeights,
    MemoryRecall,
    MemoryWriter,
    TurnRecord,
    fuse,
    search_context,
    speaker_of,
)
from engine.ports import MemoryRecord, StoredMessage, VectorHit
from storage.sql import SQLConversationStore
from tests.fakes.ports import FakeEmbedder, InMemoryVectorMemory

T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def record(id: str, text: str, *, days: float = 0, importance: float = 0.5) -> MemoryRecord:
    return MemoryRecord(
        id=id, user_key="u", text=text, created_at=T0 + timedelta(days=days), importance=importance
    )


def vhit(id: str, similarity: float, *, days: float = 0, importance: float = 0.5) -> VectorHit:
    meta = {
        "created_at": (T0 + timedelta(days=days)).isoformat(),
        "importance": importance,
        "sources": f"m-{id}",
    }
    return VectorHit(id=id, text=f"text {id}", similarity=similarity, metadata=meta)


def test_fuse_weights_keyword_and_dense_after_scaling_each_list() -> None:
    dense = [vhit("a", 0.60), vhit("b", 0.55), vhit("c", 0.30)]
    keyword = [(record("c", "text c"), 12.0), (record("d", "text d"), 6.0)]
    only = FusionWeights(keyword=0.6, dense=0.4, recency=0, importance=0)
    hits = fuse(dense, keyword, 3, only)
    # c: 0.6 * 1 + 0.4 * 0.5 = 0.8; a: 0.4; b: 0.367; d: 0.3
    assert [h.memory_id for h in hits] == ["c", "a", "b"]
    assert abs(hits[0].score - 0.8) < 1e-9
    assert hits[1].source_message_ids == ("m-a",)
    assert [h.memory_id for h in fuse(dense, keyword, 5, FusionWeights(keyword=1, dense=0))] == [
        "c",
        "d",
        "a",
        "b",
    ]
    assert fuse([], [], 5, only) == []


def test_fuse_recency_and_importance_break_ties_only_when_weighted() -> None:
    dense = [vhit("old", 0.5, days=0, importance=0.9), vhit("new", 0.5, days=60)]
    assert [h.memory_id for h in fuse(dense, [], 2, FusionWeights(recency=0.05, importance=0))] == [
        "new",
        "old",
    ]
    assert [h.memory_id for h in fuse(dense, [], 2, FusionWeights(recency=0, importance=0.05))] == [
        "old",
        "new",
    ]


def test_fuse_prefers_what_the_person_the_query_names_said() -> None:
    dense = [
        VectorHit("mel", "Caroline: Melanie painted a sunrise", 0.6, vhit("mel", 0).metadata),
        VectorHit("by-mel", "Melanie: I painted the lake at dawn", 0.5, vhit("by-mel", 0).metadata),
    ]
    plain = FusionWeights(keyword=0, dense=1, recency=0, importance=0, speaker=0)
    assert [h.memory_id for h in fuse(dense, [], 2, plain, query="When did Melanie paint?")] == [
        "mel",
        "by-mel",
    ]
    named = FusionWeights(keyword=0, dense=1, recency=0, importance=0, speaker=0.4)
    hits = fuse(dense, [], 2, named, query="When did MELANIE paint?")
    assert [h.memory_id for h in hits] == ["by-mel", "mel"]
    assert abs(hits[0].score - (0.5 / 0.6 + 0.4)) < 1e-9
    # a name counts as a whole word only, and only when the query has one
    assert [h.memory_id for h in fuse(dense, [], 2, named, query="Melanies?")] == ["mel", "by-mel"]
    assert [h.memory_id for h in fuse(dense, [], 2, named)] == ["mel", "by-mel"]


def test_speaker_and_search_context_of_a_memory() -> None:
    assert speaker_of("Melanie: I painted a sunrise") == "Melanie"
    assert speaker_of("no speaker here") == ""
    assert speaker_of(": empty name") == ""
    assert search_context(T0, "") == "8 May 2023"
    assert search_context(T0, " Caroline: how was it? ") == "8 May 2023\nCaroline: how was it?"


async def test_writer_keeps_the_turn_a_message_followed_for_keyword_search(tmp_path: Path) -> None:
    store = SQLConversationStore(f"sqlite:///{tmp_path / 'm.db'}")
    await store.start()
    try:
        writer = MemoryWriter(store, InMemoryVectorMemory(), FakeEmbedder())
        said = StoredMessage(
            id="m1", conversation_key="c", user_key="u", role="user", content="Yes, it was amazing, truly!",
            platform="p", channel_id="c", created_at=T0, user_name="Ana",
        )  # fmt: skip
        await writer.write([TurnRecord(said, None, follows="Bot: How was the pottery class?")])
        [(found, _)] = await store.keyword_search("u", "pottery", 5)
        assert found.text == "Ana: Yes, it was amazing, truly!"
        assert found.search_context == "8 May 2023\nBot: How was the pottery class?"
        assert found.source_message_ids == ("m1",)
    finally:
        await store.aclose()


async def test_hybrid_recall_finds_a_rare_word_dense_misses(tmp_path: Path) -> None:
    store = SQLConversationStore(f"sqlite:///{tmp_path / 'm.db'}")
    vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
    await store.start()
    try:
        writer = MemoryWriter(store, vectors, embedder)
        texts = [
            "I adopted a tortoise called Zeppelin",
            *(f"filler message number {i} here" for i in range(30)),
        ]
        await writer.write(
            [
                TurnRecord(
                    StoredMessage(
                        id=f"m{i}", conversation_key="c", user_key="u", role="user", content=t,
                        platform="p", channel_id="c", created_at=T0 + timedelta(minutes=i), user_name="Ana",
                    ),
                    None,
                )
                for i, t in enumerate(texts)
            ]
        )  # fmt: skip
        hybrid = MemoryRecall(vectors, embedder, top_k=3, min_similarity=-1.0, keywords=store)
        hits, embedding = await hybrid.search("u", "what is the tortoise's name?", embed_text="Ana: what?")
        assert hits[0].source_message_ids == ("m0",)
        assert embedding == (await embedder.embed(["Ana: what?"]))[0]
        assert [h.memory_id for h in await hybrid.recall("u", "Zeppelin")][:1] == [hits[0].memory_id]
        assert await hybrid.recall("someone-else", "Zeppelin") == []
        assert (await hybrid.search("u", "   "))[0] == []
        # the old call still works, dense only without words to match
        dense_only = await hybrid.recall_by_vector("u", embedding)
        assert len(dense_only) == 3
    finally:
        await store.aclose()
