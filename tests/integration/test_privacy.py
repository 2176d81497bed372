"""Privacy end to end: export and forget a user on the real stores, then scan everything.

Two users talk to a real ``Engine`` (fake LLM that echoes, fake embedder) backed by the real
SQL store (SQLite; PostgreSQL in a database of its own, dropped afterwards), embedded Chroma
and the real cache (in-process; Redis under a unique key prefix). ``export_user(A)`` must
hold A's profile, messages, memories and relationship and nothing of B; after
``forget_user(A)`` no SQL table (every text/JSON column of every row, tables found by
reflection), no vector collection and no cache key may still hold A's key, words or names,
while B's data is intact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import chromadb
import pytest
import sqlalchemy as sa
from chromadb.config import Settings

from config.settings import PACKAGED_PERSONAS
from engine.events import ChatMessage, UniversalMessage
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine
from engine.ports import Cache
from engine.relationship import RELATIONSHIP_SETTING
from storage.sql import SQLConversationStore
from storage.vector.chroma import ChromaVectorMemory
from tests.fakes.ports import FakeEmbedder, FakeLLM
from tests.integration.conftest import cache_entries, started_store

T = TypeVar("T")

A_ID, A_NAME, A_PREFERRED = "alice4242", "Zanzibar", "Zedmoria"
A_KEY = f"test:{A_ID}"
A_WORDS = ("xylophonequokka", "pomegrakitty", "quillfeather")
B_ID, B_NAME = "bob5353", "Bartholomew"
B_KEY = f"test:{B_ID}"
B_WORDS = ("marmaladetoast", "harpsichordian")

A_NEEDLES = (A_ID, A_NAME, A_PREFERRED, *A_WORDS)
B_NEEDLES = (B_ID, B_NAME, *B_WORDS)


@dataclass(slots=True)
class Kit:
    engine: Engine
    store: SQLConversationStore
    cache: Cache
    vectors: ChromaVectorMemory
    chroma_path: Path


@pytest.fixture
async def kit(sql_url: str, any_cache: Cache, tmp_path: Path) -> AsyncIterator[Kit]:
    async with started_store(sql_url) as store:
        chroma_path = tmp_path / "chroma"
        vectors = ChromaVectorMemory.embedded(chroma_path, collection_prefix=f"p{uuid4().hex[:8]}")
        await vectors.start()
        embedder = FakeEmbedder()

        def echo(messages: list[ChatMessage]) -> str:
            return f"You said: {messages[-1].content}"

        engine = Engine(
            llm=FakeLLM(echo),
            store=store,
            cache=any_cache,
            personas=PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store),
            recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.2, keywords=store),
            writer=MemoryWriter(store, vectors, embedder, queue_size=8),
            bot_name="Ember",
        )
        await engine.start()
        try:
            yield Kit(engine, store, any_cache, vectors, chroma_path)
        finally:
            await engine.aclose()
            await vectors.aclose()


def _dm(text: str, user_id: str, name: str) -> UniversalMessage:
    return UniversalMessage(
        content=text,
        user_id=user_id,
        user_name=name,
        platform="test",
        channel_id=f"dm-{user_id}",
        is_direct=True,
    )


def _group(text: str, user_id: str, name: str) -> UniversalMessage:
    return UniversalMessage(
        content=text, user_id=user_id, user_name=name, platform="test", channel_id="c1", guild_id="g1"
    )


async def _talk(engine: Engine) -> None:
    script = [
        _dm(f"I am so happy today, my secret hobby is playing the {A_WORDS[0]}", A_ID, A_NAME),
        _dm(f"Please call me {A_PREFERRED}, everyone does", A_ID, A_NAME),
        _dm(f"My cat is called {A_WORDS[1]} and I love her", A_ID, A_NAME),
        _dm(f"I feel sad, I miss my {B_WORDS[0]} breakfast every morning", B_ID, B_NAME),
        _group(f"Hello channel, I write with a {A_WORDS[2]} pen", A_ID, A_NAME),
        _group(f"Nice, I play the {B_WORDS[1]} keyboard at home", B_ID, B_NAME),
    ]
    for message in script:
        await engine.handle(message).collect()
    await engine.writer.drain()
    await engine.relationships.drain()


def _texts(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):  # e.g. SQLite's FTS5 index blocks
        return bytes(value).decode("latin-1")
    if value is None or isinstance(value, int | float | bool):
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


async def _sql_rows(store: SQLConversationStore) -> dict[str, list[str]]:
    """Every text/JSON/binary value of every row of every table (FTS5's own tables included)."""

    def reflect(conn: sa.Connection) -> sa.MetaData:
        meta = sa.MetaData()
        meta.reflect(conn)
        return meta

    found: dict[str, list[str]] = {}
    async with store.engine.connect() as conn:
        meta = await conn.run_sync(reflect)
        assert {"users", "messages", "memories", "settings"} <= set(meta.tables)
        for name, table in meta.tables.items():
            rows = (await conn.execute(sa.select(table))).all()
            found[name] = [_texts(value) for row in rows for value in row]
    return found


def _chroma_items(path: Path) -> dict[str, list[str]]:
    """Every document and metadata of every collection on disk, read by a fresh client."""
    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    found: dict[str, list[str]] = {}
    for collection in client.list_collections():
        got = collection.get(include=["documents", "metadatas"])
        found[collection.name] = [
            *(d or "" for d in got["documents"] or []),
            *(json.dumps(m) for m in got["metadatas"] or []),
            json.dumps(collection.metadata or {}),
        ]
    return found


def _mentions(texts: list[str], needles: tuple[str, ...]) -> list[str]:
    return [t for t in texts if any(n.lower() in t.lower() for n in needles)]


async def test_export_then_forget_leaves_nothing_of_the_user(kit: Kit) -> None:
    engine, store, cache = kit.engine, kit.store, kit.cache
    await _talk(engine)

    # --- export: all of A, nothing of B ---------------------------------------------------
    exported = await engine.export_user(A_KEY)
    document = json.dumps(exported)
    assert exported["profile"]["user_key"] == A_KEY  # type: ignore[index]
    assert exported["profile"]["preferred_name"] == A_PREFERRED  # type: ignore[index]
    assert exported["profile"]["message_count"] == 4  # type: ignore[index]
    messages = exported["messages"]
    assert isinstance(messages, list) and {m["user_key"] for m in messages} == {A_KEY}
    assert {m["role"] for m in messages} == {"user", "assistant"}
    assert all(word in document for word in A_WORDS)
    assert any(A_WORDS[0] in m["text"] for m in exported["memories"])  # type: ignore[attr-defined]
    relationship = exported["relationship"]
    assert relationship["interactions"] == 4  # type: ignore[index]
    assert relationship["preferred_name"] == A_PREFERRED  # type: ignore[index]
    assert relationship["recent_emotions"][0] == "joy"  # type: ignore[index]
    assert exported["settings"][RELATIONSHIP_SETTING]["interactions"] == 4  # type: ignore[index]
    assert _mentions([document], B_NEEDLES) == []

    # before forgetting, the scans do see A (so an empty scan later means something)
    assert _mentions([t for rows in (await _sql_rows(store)).values() for t in rows], A_NEEDLES)
    assert _mentions(await cache_entries(cache), A_NEEDLES)
    assert await kit.vectors.count(A_KEY) > 0

    b_before = await engine.export_user(B_KEY)
    b_vectors = await kit.vectors.count(B_KEY)
    assert b_vectors > 0

    # --- forget ---------------------------------------------------------------------------
    assert await engine.forget_user(A_KEY) > 0

    rows = await _sql_rows(store)
    leftovers = {table: _mentions(texts, A_NEEDLES) for table, texts in rows.items()}
    assert all(not found for found in leftovers.values()), leftovers
    assert _mentions(rows["messages"], B_WORDS)  # B's messages are still there
    assert _mentions(await cache_entries(cache), A_NEEDLES) == []
    assert await kit.vectors.count(A_KEY) == 0
    assert await kit.vectors.count(B_KEY) == b_vectors
    assert await store.get_user(A_KEY) is None
    assert await store.get_setting(A_KEY, RELATIONSHIP_SETTING) is None

    # B is intact: the same export, apart from when it was made
    b_after = await engine.export_user(B_KEY)
    b_before.pop("exported_at")
    b_after.pop("exported_at")
    assert b_after == b_before
    assert b_after["relationship"]["interactions"] == 2  # type: ignore[index]

    if store.kind == "sqlite":  # not even in the file's free pages or the WAL
        database = Path(store.engine.url.database or "")
        async with store.engine.connect() as conn:
            await conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
        raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
        assert [n for n in A_NEEDLES if n.encode() in raw] == []
        assert B_WORDS[0].encode() in raw

    # the vector store on disk, read by a fresh client once ours is closed
    await engine.aclose()
    await kit.vectors.aclose()
    collections = _chroma_items(kit.chroma_path)
    assert collections, "Chroma holds B's collection"
    leftovers = {name: _mentions(texts, A_NEEDLES) for name, texts in collections.items()}
    assert all(not found for found in leftovers.values()), leftovers
    assert any(_mentions(texts, B_WORDS) for texts in collections.values())

    # and A, coming back, is a stranger
    await engine.start()
    await kit.vectors.start()
    exported = await engine.export_user(A_KEY)
    assert exported["profile"] is None and exported["relationship"] is None
    assert exported["messages"] == [] and exported["memories"] == [] and exported["settings"] == {}
