"""The store spool: writes kept on local disk while the database is down, replayed when it returns.

PostgreSQL outages are real: a private cluster (``tests/fakes/private_postgres.py``) is
stopped and started. SQLite's "outage" is a real lock held by another connection.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from config.settings import PACKAGED_PERSONAS
from engine.errors import BackendUnavailable, WriteRefused
from engine.events import ReplyKind, UniversalMessage, utcnow
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import NOT_SAVED, Engine, stored_message_id
from engine.ports import MemoryRecord, StoredMessage
from storage.cache.memory import MemoryCache
from storage.sql import schema
from storage.sql.spool import SpoolingConversationStore, WriteSpool
from storage.sql.store import SQLConversationStore
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory
from tests.fakes.private_postgres import PrivatePostgres, create_database, private_postgres

__all__ = ["private_postgres"]  # the fixture, used by name

REPLY = "Noted, thank you!"


@pytest.fixture
def pg(private_postgres: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The module's private cluster, running at the start and at the end of each test."""
    private_postgres.start()
    yield private_postgres
    private_postgres.start()


@pytest.fixture
async def pg_url(pg: PrivatePostgres) -> str:
    """A fresh database on the private cluster."""
    return await create_database(pg, "spool")


@pytest.fixture
async def spooled(pg_url: str, tmp_path: Path) -> AsyncIterator[SpoolingConversationStore]:
    store = SpoolingConversationStore(
        SQLConversationStore(pg_url, connect_timeout_s=2), tmp_path / "spool", replay_interval_s=0.1
    )
    await store.start()
    yield store
    await store.aclose()


def message(n: int, *, user: str = "telegram:7", at_s: int = 0) -> StoredMessage:
    return StoredMessage(
        id=f"m{n}",
        conversation_key="telegram:chat1",
        user_key=user,
        role="user",
        content=f"message number {n}",
        platform="telegram",
        channel_id="chat1",
        created_at=utcnow(),
        user_name="Kate",
    )


async def table_rows(store: SQLConversationStore, table: sa.Table) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(sa.select(table))]


async def test_writes_during_an_outage_are_spooled_then_replayed_in_order(
    spooled: SpoolingConversationStore, pg: PrivatePostgres
) -> None:
    await spooled.touch_user(
        "telegram:7", platform="telegram", user_id="7", display_name="Kate", seen_at=utcnow()
    )
    await spooled.add_message(message(1))

    pg.stop("immediate")
    profile = await spooled.touch_user(
        "telegram:7", platform="telegram", user_id="7", display_name="Katie", seen_at=utcnow()
    )
    assert profile.message_count == 2 and profile.display_name == "Katie"
    await spooled.add_message(message(2))
    await spooled.add_memories([MemoryRecord("mem1", "telegram:7", "Kate: I have a cat", utcnow())])
    await spooled.set_setting("telegram:7", "colour", "green")
    await spooled.set_setting("telegram:7", "colour", "blue")
    assert spooled.pending == 5
    assert len((spooled.spool.path).read_text().splitlines()) == 5
    # read your writes: a spooled setting answers at once; reads that need the database cannot
    assert await spooled.get_setting("telegram:7", "colour") == "blue"
    with pytest.raises(BackendUnavailable):
        await spooled.recent_messages("telegram:chat1", 10)

    pg.start()
    assert await spooled.replay()
    assert spooled.pending == 0
    assert spooled.spool.path.stat().st_size == 0
    stored = await spooled.recent_messages("telegram:chat1", 10)
    assert [m.id for m in stored] == ["m1", "m2"]
    user = await spooled.store.get_user("telegram:7")
    assert user is not None and user.message_count == 2 and user.display_name == "Katie"
    assert [m.id for m in await spooled.list_memories("telegram:7")] == ["mem1"]
    assert await spooled.store.get_setting("telegram:7", "colour") == "blue"  # the later write won


async def test_the_replay_task_writes_the_spool_when_the_database_returns(
    spooled: SpoolingConversationStore, pg: PrivatePostgres
) -> None:
    pg.stop("fast")
    await spooled.add_message(message(1))
    assert spooled.pending == 1
    pg.start()
    # the background task pings every 0.1 s; this waits for it, not for a fixed time
    for _ in range(200):
        if spooled.pending == 0:
            break
        await asyncio.sleep(0.05)
    assert spooled.pending == 0
    assert [m.id for m in await spooled.recent_messages("telegram:chat1", 5)] == ["m1"]


async def test_while_anything_is_spooled_new_writes_queue_behind_it(
    spooled: SpoolingConversationStore, pg: PrivatePostgres
) -> None:
    pg.stop("fast")
    await spooled.set_setting("s", "k", "old")
    pg.start()
    # the database is back, but an older write is still waiting: this one must not overtake it
    await spooled.set_setting("s", "k", "new")
    assert spooled.pending == 2
    assert await spooled.replay()
    assert await spooled.store.get_setting("s", "k") == "new"


async def test_replaying_twice_duplicates_nothing(
    spooled: SpoolingConversationStore, pg: PrivatePostgres, pg_url: str, tmp_path: Path
) -> None:
    pg.stop("immediate")
    for n in range(3):
        await spooled.add_message(message(n))
    await spooled.add_memories([MemoryRecord("mem1", "telegram:7", "Kate: I have a cat", utcnow())])
    copy = tmp_path / "copy.jsonl"
    shutil.copy(spooled.spool.path, copy)
    pg.start()
    assert await spooled.replay()
    await spooled.aclose()

    # a crash after the rows were written but before the spool was emptied: it is all there again
    shutil.copy(copy, spooled.spool.path)
    again = SpoolingConversationStore(SQLConversationStore(pg_url), spooled.spool.directory)
    await again.start()  # replays at start-up
    try:
        assert again.pending == 0
        assert len(await table_rows(again.store, schema.messages)) == 3
        assert len(await table_rows(again.store, schema.memories)) == 1
    finally:
        await again.aclose()


async def test_a_crash_during_an_outage_loses_nothing_acknowledged(
    pg_url: str, pg: PrivatePostgres, tmp_path: Path
) -> None:
    first = SpoolingConversationStore(SQLConversationStore(pg_url, connect_timeout_s=2), tmp_path / "spool")
    await first.start()
    pg.stop("immediate")
    await first.add_message(message(1))
    await first.add_message(message(2))
    # the process dies here: no aclose(); a torn half line from a write that never returned
    torn = first.spool.path.read_bytes() + b'{"op":"add_message","args":{"mess'
    first.spool.path.write_bytes(torn)
    pg.start()

    second = SpoolingConversationStore(SQLConversationStore(pg_url), tmp_path / "spool")
    await second.start()
    try:
        assert second.pending == 0
        assert [m.id for m in await second.recent_messages("telegram:chat1", 10)] == ["m1", "m2"]
    finally:
        await second.aclose()
        await first.store.aclose()
        await first.spool.close()


async def test_beyond_the_bound_writes_are_refused_and_nothing_is_spooled(
    pg_url: str, pg: PrivatePostgres, tmp_path: Path
) -> None:
    store = SpoolingConversationStore(SQLConversationStore(pg_url), tmp_path / "spool", max_entries=2)
    await store.start()
    try:
        pg.stop("fast")
        await store.add_message(message(1))
        await store.add_message(message(2))
        with pytest.raises(WriteRefused) as refused:
            await store.add_message(message(3))
        assert "spool is full" in str(refused.value)
        assert store.pending == 2
        pg.start()
        assert await store.replay()
        await store.add_message(message(3))  # straight to the database again
        assert [m.id for m in await store.recent_messages("telegram:chat1", 10)] == ["m1", "m2", "m3"]
    finally:
        await store.aclose()


async def test_sqlite_locked_by_another_writer_spools_too(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    store = SpoolingConversationStore(
        SQLConversationStore(f"sqlite:///{path}", busy_timeout_s=0.05), tmp_path / "spool"
    )
    await store.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds SQLite's single write lock
        await store.add_message(message(1))
        assert store.pending == 1
        other.execute("ROLLBACK")
        assert await store.replay()
        assert [m.id for m in await store.recent_messages("telegram:chat1", 5)] == ["m1"]
    finally:
        other.close()
        await store.aclose()


# --- through the engine ----------------------------------------------------------------------


async def make_engine(store: SpoolingConversationStore) -> Engine:
    vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
    engine = Engine(
        llm=FakeLLM(REPLY),
        store=store,
        cache=MemoryCache(),
        personas=PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store),
        recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.1, keywords=store),
        writer=MemoryWriter(store, vectors, embedder),
    )
    await engine.cache.start()
    await engine.start()
    return engine


def telegram_message(n: int, text: str) -> UniversalMessage:
    return UniversalMessage(
        platform="telegram",
        message_id=str(n),
        channel_id="chat1",
        user_id="7",
        user_name="Kate",
        content=text,
        is_direct=True,
        timestamp=utcnow(),
    )


async def test_the_engine_answers_during_an_outage_and_refuses_beyond_the_bound(
    pg_url: str, pg: PrivatePostgres, tmp_path: Path
) -> None:
    store = SpoolingConversationStore(SQLConversationStore(pg_url), tmp_path / "spool")
    await store.start()
    engine = await make_engine(store)
    try:
        first = await engine.handle(telegram_message(1, "Hello, I love hiking in the Alps")).collect()
        assert first.content == REPLY
        await engine.writer.drain()

        pg.stop("immediate")
        during = await engine.handle(telegram_message(2, "My sister is called Anna")).collect()
        assert during.kind is ReplyKind.ANSWER and during.content == REPLY
        await engine.writer.drain()
        await engine.relationships.drain()
        # the user, the message, the relationship, the reply and the memory wait in the spool
        assert store.pending >= 4
        store.spool.max_entries = store.pending  # and now it is full

        refused = await engine.handle(telegram_message(3, "And my brother is Tom")).collect()
        assert refused.kind is ReplyKind.APOLOGY
        assert refused.content == NOT_SAVED
        assert "spool is full" in (refused.error or "")

        pg.start()
        assert await store.replay()
        rows = await table_rows(store.store, schema.messages)
        ids = {r["id"] for r in rows}
        assert stored_message_id(telegram_message(2, "")) in ids
        assert stored_message_id(telegram_message(3, "")) not in ids  # refused, and the user was told
        assert [r["role"] for r in sorted(rows, key=lambda r: r["seq"])] == ["user", "assistant"] * 2
        memories = await table_rows(store.store, schema.memories)
        assert {m["text"] for m in memories} == {
            "Kate: Hello, I love hiking in the Alps",
            "Kate: My sister is called Anna",
        }
    finally:
        await engine.aclose()
        await engine.cache.aclose()
        await store.aclose()


def test_the_spooling_store_offers_every_method_of_the_sql_store() -> None:
    """Code that takes the composition root's store gets the same methods whichever it is."""
    public = {
        name
        for name in dir(SQLConversationStore)
        if not name.startswith("_") and callable(getattr(SQLConversationStore, name))
    }
    missing = sorted(name for name in public if not hasattr(SpoolingConversationStore, name))
    assert missing == []


async def test_the_spool_file_resumes_where_the_replay_stopped(tmp_path: Path) -> None:
    spool = WriteSpool(tmp_path / "spool", max_entries=10, max_bytes=1_000_000, service="PostgreSQL")
    await spool.open()
    for n in range(3):
        await spool.append("set_setting", {"scope": "s", "key": "k", "value": n})
    [first, *_] = await spool.pending()
    await spool.mark_replayed(first)
    await spool.close()  # a crash after the first entry reached the database

    again = WriteSpool(tmp_path / "spool", max_entries=10, max_bytes=1_000_000, service="PostgreSQL")
    await again.open()
    try:
        assert again.entries == 2
        assert [e.args["value"] for e in await again.pending()] == [1, 2]
        assert (spool.path.stat().st_mode & 0o777) == 0o600  # what users wrote, private
    finally:
        await again.close()


async def test_a_full_spool_counts_bytes_too(tmp_path: Path) -> None:
    spool = WriteSpool(tmp_path / "spool", max_entries=100, max_bytes=200, service="SQLite")
    await spool.open()
    try:
        await spool.append("set_setting", {"scope": "s", "key": "k", "value": "x" * 50})
        with pytest.raises(WriteRefused, match="spool is full"):
            await spool.append("set_setting", {"scope": "s", "key": "k", "value": "x" * 150})
        assert spool.entries == 1
        assert len(spool.path.read_bytes().splitlines()) == 1
    finally:
        await spool.close()
