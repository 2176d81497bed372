"""Contract of the ConversationStore port, run against every SQL backend (SQLite, PostgreSQL).

SQLite runs on a file in tmp_path; PostgreSQL on a database created for this test session and
dropped at its end (skipped without a server, failed under CI). Scoping is checked by reading
the tables directly, not only through the port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import make_url

from engine.errors import BackendUnavailable, ConfigError, StorageError
from engine.ports import MemoryRecord, StoredMessage, UserProfile, WriteBatch
from storage.sql import schema
from storage.sql.store import SQLConversationStore, database_kind
from tests.conftest import fresh_postgres_database

T = TypeVar("T")
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
TABLES = (schema.users, schema.messages, schema.memories, schema.settings)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sql_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    with fresh_postgres_database("we_test_store") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data/conversations.db"
    return str(request.getfixturevalue("sql_pg_url"))


@pytest.fixture
async def sql_store(sql_url: str) -> AsyncIterator[SQLConversationStore]:
    store = SQLConversationStore(sql_url)
    await store.start()
    async with store.engine.begin() as conn:  # the PostgreSQL database is shared by the session
        for table in TABLES:
            await conn.execute(table.delete())
    try:
        yield store
    finally:
        await store.aclose()


async def rows(store: SQLConversationStore, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(sa.select(table).where(*where))
        return [dict(row._mapping) for row in result]


def message(
    id: str,
    *,
    conversation: str = "discord:c1",
    user: str = "discord:1",
    at_s: float = 0,
    role: str = "user",
    content: str | None = None,
) -> StoredMessage:
    return StoredMessage(
        id=id,
        conversation_key=conversation,
        user_key=user,
        role=role,  # type: ignore[arg-type]
        content=content if content is not None else f"text of {id}",
        platform="discord",
        channel_id=conversation.split(":")[1],
        created_at=at(at_s),
        user_name="Alice",
    )


async def touch(
    store: SQLConversationStore, user_key: str, seen_at: datetime, name: str = "A"
) -> UserProfile:
    platform, user_id = user_key.split(":")
    return await store.touch_user(
        user_key, platform=platform, user_id=user_id, display_name=name, seen_at=seen_at
    )


def memory(id: str, *, user: str = "discord:1", at_s: float = 0, text: str | None = None) -> MemoryRecord:
    return MemoryRecord(
        id=id,
        user_key=user,
        text=text if text is not None else f"memory {id}",
        created_at=at(at_s),
        kind="fact",
        importance=0.75,
        platform="discord",
        channel_id="c1",
        source_message_ids=(f"src-{id}", "src-common"),
    )


# --- users -------------------------------------------------------------------------------


async def test_touch_user_creates_then_updates(sql_store: SQLConversationStore) -> None:
    first = await touch(sql_store, "discord:1", at(0), "Alice")
    assert (first.user_key, first.platform, first.user_id, first.display_name) == (
        "discord:1",
        "discord",
        "1",
        "Alice",
    )
    assert (first.first_seen, first.last_seen, first.message_count) == (at(0), at(0), 1)
    assert first.preferred_name is None

    second = await touch(sql_store, "discord:1", at(60), "Alice B.")
    assert (second.display_name, second.first_seen, second.last_seen, second.message_count) == (
        "Alice B.",
        at(0),
        at(60),
        2,
    )
    assert await sql_store.get_user("discord:1") == second


async def test_touch_user_never_moves_last_seen_back(sql_store: SQLConversationStore) -> None:
    await touch(sql_store, "discord:1", at(60))
    late = await touch(sql_store, "discord:1", at(0))
    assert (late.first_seen, late.last_seen, late.message_count) == (at(0), at(60), 2)


async def test_get_user_unknown_is_none(sql_store: SQLConversationStore) -> None:
    assert await sql_store.get_user("discord:nobody") is None


async def test_timestamps_round_trip_as_aware_utc(sql_store: SQLConversationStore) -> None:
    kolkata = datetime(2024, 5, 1, 17, 30, 0, 654321, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    profile = await touch(sql_store, "discord:1", kolkata)
    await sql_store.add_message(
        StoredMessage(
            id="m1",
            conversation_key="discord:c1",
            user_key="discord:1",
            role="user",
            content="hi",
            platform="discord",
            channel_id="c1",
            created_at=kolkata,
        )
    )
    await sql_store.add_memories([MemoryRecord(id="k1", user_key="discord:1", text="t", created_at=kolkata)])

    stored = [
        profile.first_seen,
        (await sql_store.get_user("discord:1")).last_seen,  # type: ignore[union-attr]
        (await sql_store.recent_messages("discord:c1", 1))[0].created_at,
        (await sql_store.get_memories("discord:1", ["k1"]))[0].created_at,
    ]
    for value in stored:
        assert value == kolkata
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
        assert value == datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=UTC)
    (memory_row,) = await rows(sql_store, schema.memories)
    assert memory_row["updated_at"].utcoffset() == timedelta(0)
    assert memory_row["last_used_at"] is None
    assert memory_row["use_count"] == 0


async def test_naive_datetimes_are_refused(sql_store: SQLConversationStore) -> None:
    naive = datetime(2024, 5, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        await touch(sql_store, "discord:1", naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        await sql_store.add_message(
            StoredMessage(
                id="m",
                conversation_key="c",
                user_key="u",
                role="user",
                content="",
                platform="p",
                channel_id="c",
                created_at=naive,
            )
        )
    assert await rows(sql_store, schema.users) == []


async def test_concurrent_touches_all_count(sql_store: SQLConversationStore) -> None:
    await asyncio.gather(*(touch(sql_store, "discord:1", at(i)) for i in range(40)))
    profile = await sql_store.get_user("discord:1")
    assert profile is not None
    assert (profile.message_count, profile.first_seen, profile.last_seen) == (40, at(0), at(39))


# --- messages ----------------------------------------------------------------------------


async def test_message_fields_round_trip(sql_store: SQLConversationStore) -> None:
    original = StoredMessage(
        id="m1",
        conversation_key="discord:c1:t9",
        user_key="discord:1",
        role="assistant",
        content="Héllo 👋\nsecond line",
        platform="discord",
        channel_id="c1",
        created_at=at(0),
        user_name="Alice",
        guild_id="g1",
        thread_id="t9",
        platform_message_id="9876543210",
    )
    await sql_store.add_message(original)
    assert await sql_store.recent_messages("discord:c1:t9", 10) == [original]
    assert await sql_store.user_messages("discord:1") == [original]


async def test_add_message_is_idempotent_on_id(sql_store: SQLConversationStore) -> None:
    first = message("m1", content="original")
    await sql_store.add_message(first)
    await sql_store.add_message(first)
    await sql_store.add_message(message("m1", content="a retried write with other content"))
    assert await sql_store.recent_messages("discord:c1", 10) == [first]
    assert len(await rows(sql_store, schema.messages)) == 1


async def test_recent_messages_are_the_newest_oldest_first(sql_store: SQLConversationStore) -> None:
    for i in (3, 0, 7, 1, 9, 5, 2, 8, 4, 6):  # written out of order
        await sql_store.add_message(message(f"m{i}", at_s=i))
    await sql_store.add_message(message("other", conversation="discord:c2", at_s=100))

    recent = await sql_store.recent_messages("discord:c1", 4)
    assert [m.id for m in recent] == ["m6", "m7", "m8", "m9"]
    assert [m.id for m in await sql_store.recent_messages("discord:c1", 50)] == [f"m{i}" for i in range(10)]
    assert await sql_store.recent_messages("discord:c1", 0) == []
    assert await sql_store.recent_messages("discord:nowhere", 5) == []
    assert [m.id for m in await sql_store.recent_messages("discord:c2", 5)] == ["other"]


async def test_messages_written_in_the_same_instant_keep_their_order(sql_store: SQLConversationStore) -> None:
    ids = ["zz", "aa", "mm", "bb"]  # not sorted by id
    for id in ids:
        await sql_store.add_message(message(id, at_s=5))
    assert [m.id for m in await sql_store.recent_messages("discord:c1", 10)] == ids
    assert [m.id for m in await sql_store.recent_messages("discord:c1", 2)] == ids[2:]
    assert [m.id for m in await sql_store.user_messages("discord:1")] == ids


async def test_user_messages_are_the_users_oldest_first(sql_store: SQLConversationStore) -> None:
    await sql_store.add_message(message("a2", user="discord:1", at_s=2, conversation="discord:c2"))
    await sql_store.add_message(message("a0", user="discord:1", at_s=0))
    await sql_store.add_message(message("reply", user="discord:1", at_s=1, role="assistant"))
    await sql_store.add_message(message("b1", user="discord:2", at_s=1))

    assert [m.id for m in await sql_store.user_messages("discord:1")] == ["a0", "reply", "a2"]
    assert [m.id for m in await sql_store.user_messages("discord:1", limit=2)] == ["a0", "reply"]
    assert [m.id for m in await sql_store.user_messages("discord:2")] == ["b1"]
    assert await sql_store.user_messages("discord:3") == []


# --- memories ----------------------------------------------------------------------------


async def test_memories_round_trip_in_requested_order(sql_store: SQLConversationStore) -> None:
    records = [memory(f"k{i}", at_s=i) for i in range(3)]
    await sql_store.add_memories(records)
    assert await sql_store.get_memories("discord:1", ["k2", "k0", "missing", "k1", "k2"]) == [
        records[2],
        records[0],
        records[1],
    ]
    assert await sql_store.get_memories("discord:1", []) == []
    assert await sql_store.count_memories("discord:1") == 3


async def test_add_memories_is_idempotent_and_updates_own_memory(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory("k1", at_s=0)])
    await sql_store.add_memories([memory("k1", at_s=0)])
    assert await sql_store.count_memories("discord:1") == 1

    await sql_store.add_memories([memory("k1", at_s=30, text="merged memory")])
    (updated,) = await sql_store.get_memories("discord:1", ["k1"])
    assert (updated.text, updated.created_at) == ("merged memory", at(0))
    assert await sql_store.count_memories("discord:1") == 1


async def test_list_memories_newest_first_with_paging(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory(f"k{i}", at_s=i) for i in (2, 0, 4, 1, 3)])
    assert [m.id for m in await sql_store.list_memories("discord:1")] == ["k4", "k3", "k2", "k1", "k0"]
    assert [m.id for m in await sql_store.list_memories("discord:1", limit=2)] == ["k4", "k3"]
    assert [m.id for m in await sql_store.list_memories("discord:1", limit=2, offset=2)] == ["k2", "k1"]
    assert [m.id for m in await sql_store.list_memories("discord:1", limit=2, offset=4)] == ["k0"]
    assert await sql_store.list_memories("discord:1", limit=0) == []


async def test_delete_memories_returns_how_many(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory(f"k{i}", at_s=i) for i in range(4)])
    assert await sql_store.delete_memories("discord:1", ["k0", "k2", "missing"]) == 2
    assert await sql_store.delete_memories("discord:1", ["k0"]) == 0
    assert await sql_store.delete_memories("discord:1", []) == 0
    assert [m.id for m in await sql_store.list_memories("discord:1")] == ["k3", "k1"]


async def test_memories_never_cross_users(sql_store: SQLConversationStore) -> None:
    alice, bob = "discord:1", "discord:2"
    await sql_store.add_memories([memory("a1", user=alice), memory("a2", user=alice, at_s=1)])
    await sql_store.add_memories([memory("b1", user=bob)])

    assert await sql_store.get_memories(bob, ["a1", "a2"]) == []
    assert [m.id for m in await sql_store.get_memories(bob, ["a1", "b1"])] == ["b1"]
    assert [m.id for m in await sql_store.list_memories(bob)] == ["b1"]
    assert await sql_store.count_memories(bob) == 1
    assert await sql_store.delete_memories(bob, ["a1", "a2"]) == 0

    # Bob writing a memory with one of Alice's ids neither takes it over nor changes it.
    await sql_store.add_memories([memory("a1", user=bob, text="hijacked")])
    assert await sql_store.get_memories(bob, ["a1"]) == []
    (kept,) = await sql_store.get_memories(alice, ["a1"])
    assert kept.text == "memory a1"
    assert await sql_store.count_memories(alice) == 2
    stored = await rows(sql_store, schema.memories, schema.memories.c.id == "a1")
    assert [(r["user_key"], r["text"]) for r in stored] == [(alice, "memory a1")]


async def test_many_ids_at_once(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory(f"k{i:04d}", at_s=i) for i in range(1200)])
    ids = [f"k{i:04d}" for i in range(1199, -1, -1)]
    assert [m.id for m in await sql_store.get_memories("discord:1", ids)] == ids
    assert await sql_store.delete_memories("discord:1", ids[:1100]) == 1100
    assert await sql_store.count_memories("discord:1") == 100


# --- keyword search ----------------------------------------------------------------------


async def keyword_ids(store: SQLConversationStore, user: str, query: str, k: int = 10) -> list[str]:
    return [record.id for record, _ in await store.keyword_search(user, query, k)]


async def test_keyword_search_ranks_best_match_first(sql_store: SQLConversationStore) -> None:
    texts = {
        "k-sunrise": "Melanie: I painted a sunrise over the lake last week",
        "k-lake": "Melanie: we swam in the lake",
        "k-group": "Caroline: I went to the LGBTQ support group yesterday",
        "k-other": "Caroline: my dog loves long walks",
    }
    await sql_store.add_memories([memory(i, text=t, at_s=n) for n, (i, t) in enumerate(texts.items())])

    found = await sql_store.keyword_search("discord:1", "When did Melanie paint the sunrise at the lake?", 10)
    assert [r.id for r, _ in found][:2] == ["k-sunrise", "k-lake"]
    scores = [score for _, score in found]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    (record, _) = found[0]
    assert record == memory("k-sunrise", text=texts["k-sunrise"], at_s=0)
    assert await keyword_ids(sql_store, "discord:1", "support group", 1) == ["k-group"]
    assert await keyword_ids(sql_store, "discord:1", "astronomy", 5) == []
    assert await sql_store.keyword_search("discord:1", "lake", 0) == []


async def test_keyword_search_stays_in_the_users_scope(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory("a1", user="discord:1", text="Alice: the secret word is marmalade")])
    await sql_store.add_memories([memory("b1", user="discord:2", text="Bob: marmalade on toast")])
    assert await keyword_ids(sql_store, "discord:1", "marmalade") == ["a1"]
    assert await keyword_ids(sql_store, "discord:2", "marmalade") == ["b1"]
    assert await keyword_ids(sql_store, "discord:3", "marmalade") == []


@pytest.mark.parametrize(
    "query",
    [
        'he said "hi',
        "-marmalade",
        "marmalade*",
        "text:marmalade",
        "NEAR(marmalade toast)",
        "(marmalade OR",
        "AND OR NOT",
        "marmalade & toast | !x <-> y:*",
        "it's O'Brien's \\ marmalade",
        "^ marmalade + {x} [y]",
        "",
        "   ",
        "?!.,;",
        "the and of",
    ],
)
async def test_keyword_search_never_interprets_query_syntax(
    sql_store: SQLConversationStore, query: str
) -> None:
    await sql_store.add_memories([memory("a1", text="Alice: marmalade and toast for breakfast")])
    ids = await keyword_ids(sql_store, "discord:1", query)
    assert ids == (["a1"] if "marmalade" in query.lower() else [])


async def test_keyword_search_matches_accents_and_word_forms(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory("a1", text="Zoë: I was painting in the café")])
    assert await keyword_ids(sql_store, "discord:1", "painted") == ["a1"]
    assert await keyword_ids(sql_store, "discord:1", "ZOË") == ["a1"]


async def test_keyword_index_follows_updates_and_deletes(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory("a1", text="Alice: my cat is called Pixel"), memory("a2", at_s=1)])
    await sql_store.add_memories([memory("b1", user="discord:2", text="Bob: Pixel phone")])
    await sql_store.add_memories([memory("a1", text="Alice: my cat is called Biscuit")])  # merged text
    assert await keyword_ids(sql_store, "discord:1", "pixel") == []
    assert await keyword_ids(sql_store, "discord:1", "biscuit") == ["a1"]

    assert await sql_store.delete_memories("discord:1", ["a1"]) == 1
    assert await keyword_ids(sql_store, "discord:1", "biscuit cat") == []

    await sql_store.add_memories([memory("a3", text="Alice: Biscuit again")])
    await sql_store.forget_user("discord:1")
    assert await keyword_ids(sql_store, "discord:1", "biscuit") == []
    assert await keyword_ids(sql_store, "discord:2", "pixel") == ["b1"]
    if sql_store.kind == "sqlite":  # the FTS5 index itself holds no rows of deleted memories
        async with sql_store.engine.connect() as conn:
            await conn.exec_driver_sql("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")
            hits = await conn.exec_driver_sql(
                "SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'biscuit'"
            )
            assert hits.scalar_one() == 0


async def test_keyword_search_matches_the_search_context_below_the_text(
    sql_store: SQLConversationStore,
) -> None:
    from dataclasses import replace

    reply = replace(
        memory("a-reply", text="Caroline: Yes, it was amazing, I loved every minute!"),
        search_context="8 May 2023\nMelanie: How was the pottery class?",
    )
    said = memory("a-said", text="Caroline: I signed up for a pottery class", at_s=1)
    await sql_store.add_memories([reply, said])

    assert await keyword_ids(sql_store, "discord:1", "how was the pottery class") == ["a-said", "a-reply"]
    assert await keyword_ids(sql_store, "discord:1", "May 2023") == ["a-reply"]
    [(stored, _)] = await sql_store.keyword_search("discord:1", "2023", 5)
    assert stored == reply  # kept, and given back as written

    await sql_store.add_memories([replace(reply, search_context="Melanie: and the concert?")])
    assert await keyword_ids(sql_store, "discord:1", "May 2023") == []
    assert await keyword_ids(sql_store, "discord:1", "concert") == ["a-reply"]


async def test_search_context_migration_downgrades_to_0004_and_back(sql_url: str) -> None:
    from dataclasses import replace

    from alembic import command

    from storage.sql.store import alembic_config

    store = SQLConversationStore(sql_url)
    await store.start()
    try:
        async with store.engine.begin() as conn:
            await conn.execute(schema.memories.delete())
        await store.add_memories(
            [replace(memory("a1", text="Alice: kept across the downgrade"), search_context="Bob: a question")]
        )

        def migrate(conn: sa.Connection, target: str) -> list[str]:
            config = alembic_config(conn)
            (command.downgrade if target == "0004" else command.upgrade)(config, target)
            return [c["name"] for c in sa.inspect(conn).get_columns("memories")]

        async with store.engine.begin() as conn:
            columns = await conn.run_sync(migrate, "0004")
        assert "search_context" not in columns
        async with store.engine.connect() as conn:  # the text alone is still searchable
            hits = await conn.execute(
                sa.text(
                    "SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'downgrade'"
                    if store.kind == "sqlite"
                    else "SELECT count(*) FROM memories "
                    "WHERE text_search @@ to_tsquery('english', 'downgrade')"
                )
            )
            assert hits.scalar_one() == 1
        async with store.engine.begin() as conn:
            columns = await conn.run_sync(migrate, "head")
        assert "search_context" in columns
        assert await keyword_ids(store, "discord:1", "downgrade") == ["a1"]
        await store.add_memories([replace(memory("a2", at_s=1), search_context="Bob: a question")])
        assert await keyword_ids(store, "discord:1", "question") == ["a2"]
    finally:
        await store.aclose()


async def test_keyword_migration_downgrades_to_0001_and_back(sql_url: str) -> None:
    from alembic import command

    from storage.sql.store import alembic_config

    store = SQLConversationStore(sql_url)
    await store.start()
    try:
        async with store.engine.begin() as conn:
            await conn.execute(schema.memories.delete())
        await store.add_memories([memory("a1", text="Alice: kept across the downgrade")])

        def migrate(conn: sa.Connection, target: str) -> list[str]:
            config = alembic_config(conn)
            (command.downgrade if target == "0001" else command.upgrade)(config, target)
            return sa.inspect(conn).get_table_names()

        async with store.engine.begin() as conn:
            tables = await conn.run_sync(migrate, "0001")
            version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar_one()
            columns = [
                c["name"] for c in await conn.run_sync(lambda c: sa.inspect(c).get_columns("memories"))
            ]
        assert version == "0001"
        assert not any(schema.is_keyword_search_object(t, "table") for t in tables)
        assert schema.KEYWORD_SEARCH_COLUMN not in columns
        with pytest.raises(StorageError):
            await store.keyword_search("discord:1", "downgrade", 5)

        async with store.engine.begin() as conn:
            await conn.run_sync(migrate, "head")
        # the upgrade indexes the memories that were already there
        assert await keyword_ids(store, "discord:1", "downgrade") == ["a1"]
    finally:
        await store.aclose()


# --- memory care -------------------------------------------------------------------------


async def test_reinforce_memory_strengthens_only_the_owners_memory(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory("a1"), memory("b1", user="discord:2")])
    state = await sql_store.reinforce_memory(
        "discord:1", "a1", source_message_id="src-new", at=at(60), importance_delta=0.1
    )
    assert state is not None
    assert state.mentions == 2
    assert state.importance == pytest.approx(0.85)
    assert state.source_message_ids == ("src-a1", "src-common", "src-new")  # provenance keeps all
    assert state.updated_at == at(60)
    # capped, and a source already there is not added twice
    state = await sql_store.reinforce_memory(
        "discord:1", "a1", source_message_id="src-new", at=at(61), importance_delta=0.5
    )
    assert state is not None and state.importance == 1.0 and state.mentions == 3
    assert state.source_message_ids == ("src-a1", "src-common", "src-new")
    [record] = await sql_store.get_memories("discord:1", ["a1"])
    assert record.source_message_ids == ("src-a1", "src-common", "src-new")

    # user B can never reinforce A's memory, nor A B's
    assert (
        await sql_store.reinforce_memory(
            "discord:2", "a1", source_message_id="x", at=at(62), importance_delta=0.1
        )
        is None
    )
    assert (
        await sql_store.reinforce_memory(
            "discord:1", "b1", source_message_id="x", at=at(62), importance_delta=0.1
        )
        is None
    )
    [b1] = await rows(sql_store, schema.memories, schema.memories.c.id == "b1")
    assert (b1["mentions"], b1["importance"], b1["source_message_ids"]) == (1, 0.75, ["src-b1", "src-common"])
    [a1] = await rows(sql_store, schema.memories, schema.memories.c.id == "a1")
    assert a1["mentions"] == 3


async def test_superseded_memories_are_history_not_search_results(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories(
        [
            memory("old", text="Alice: I live in Berlin"),
            memory("new", at_s=5, text="Alice: I live in Lisbon"),
            memory("b1", user="discord:2", text="Bob: I live in Berlin"),
        ]
    )
    assert not await sql_store.supersede_memory("discord:2", "old", superseded_by="new", at=at(10))
    assert await keyword_ids(sql_store, "discord:1", "live") == ["new", "old"]
    assert await sql_store.supersede_memory("discord:1", "old", superseded_by="new", at=at(10))
    assert await keyword_ids(sql_store, "discord:1", "live berlin") == ["new"]
    assert await keyword_ids(sql_store, "discord:2", "berlin") == ["b1"]  # B's memory untouched
    assert [m.id for m in await sql_store.list_memories("discord:1")] == ["new", "old"]  # kept
    states = {s.id: s for s in await sql_store.memory_states("discord:1")}
    assert states["old"].superseded_by == "new" and states["old"].updated_at == at(10)
    assert states["new"].superseded_by is None
    assert [s.id for s in await sql_store.memory_states("discord:1", ["new", "b1", "old"])] == ["new", "old"]
    [b1] = await sql_store.memory_states("discord:2")
    assert b1.superseded_by is None


async def test_mark_memories_used_counts_uses_in_scope(sql_store: SQLConversationStore) -> None:
    await sql_store.add_memories([memory("a1"), memory("a2"), memory("b1", user="discord:2")])
    assert await sql_store.mark_memories_used("discord:1", ["a1", "b1", "missing"], at=at(30)) == 1
    assert await sql_store.mark_memories_used("discord:1", ["a1"], at=at(40)) == 1
    assert await sql_store.mark_memories_used("discord:1", [], at=at(40)) == 0
    states = {s.id: s for s in await sql_store.memory_states("discord:1")}
    assert (states["a1"].use_count, states["a1"].last_used_at) == (2, at(40))
    assert (states["a2"].use_count, states["a2"].last_used_at) == (0, None)
    [b1] = await sql_store.memory_states("discord:2")
    assert (b1.use_count, b1.last_used_at) == (0, None)


async def test_write_batch_stores_messages_memories_and_uses_across_users_at_once(
    sql_store: SQLConversationStore,
) -> None:
    await sql_store.add_memories([memory("old1"), memory("old2", user="discord:2")])
    batch = WriteBatch(
        messages=[
            message("r1", role="assistant", at_s=1),
            message("r2", conversation="discord:c2", user="discord:2", role="assistant", at_s=2),
        ],
        memories=[memory("n1", at_s=1), memory("n2", user="discord:2", at_s=2)],
        used={"discord:1": ["old1", "old1", "old2"], "discord:2": ["old2"]},
        used_at=at(5),
    )
    await sql_store.write_batch(batch)
    await sql_store.write_batch(batch)  # written again (a replay): messages and memories once
    assert [m.id for m in await sql_store.recent_messages("discord:c1", 10)] == ["r1"]
    assert [m.id for m in await sql_store.recent_messages("discord:c2", 10)] == ["r2"]
    assert [m.id for m in await sql_store.get_memories("discord:1", ["n1", "n2"])] == ["n1"]
    assert [m.id for m in await sql_store.get_memories("discord:2", ["n1", "n2"])] == ["n2"]
    states = {
        s.id: s
        for s in [*await sql_store.memory_states("discord:1"), *await sql_store.memory_states("discord:2")]
    }
    # another user's memory id is never marked by this user's use
    assert (states["old1"].use_count, states["old1"].last_used_at) == (2, at(5))
    assert (states["old2"].use_count, states["old2"].last_used_at) == (2, at(5))
    assert (states["n1"].use_count, states["n2"].use_count) == (0, 0)
    await sql_store.write_batch(WriteBatch())  # nothing to do


async def test_write_batch_is_one_transaction(sql_store: SQLConversationStore) -> None:
    """A batch that fails half way (a message row the database refuses) leaves nothing behind."""
    bad = replace(message("bad", role="assistant"), role=None)  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        await sql_store.write_batch(
            WriteBatch(messages=[message("ok", role="assistant"), bad], memories=[memory("m")])
        )
    assert await sql_store.recent_messages("discord:c1", 10) == []
    assert await sql_store.get_memories("discord:1", ["m"]) == []


async def test_stale_memories_are_idle_unimportant_and_paged_by_id(sql_store: SQLConversationStore) -> None:
    low = [replace(memory(f"m{i}", user=f"discord:{i % 2}"), importance=0.3) for i in range(5)]
    await sql_store.add_memories(
        [
            *low,
            memory("important"),  # importance 0.75
            replace(memory("recent", at_s=10_000), importance=0.3),
            replace(memory("used"), importance=0.3),
            replace(memory("said-twice"), importance=0.3),
        ]
    )
    await sql_store.mark_memories_used("discord:1", ["used"], at=at(10_000))
    await sql_store.reinforce_memory(
        "discord:1", "said-twice", source_message_id="s", at=at(1), importance_delta=0
    )

    async def stale(after_id: str = "", limit: int = 100) -> list[str]:
        found = await sql_store.stale_memories(
            idle_before=at(5_000), max_importance=0.7, max_mentions=1, after_id=after_id, limit=limit
        )
        return [s.id for s in found]

    assert await stale() == ["m0", "m1", "m2", "m3", "m4"]
    assert await stale(limit=2) == ["m0", "m1"]
    assert await stale(after_id="m1", limit=2) == ["m2", "m3"]
    assert await stale(after_id="m4") == []


async def test_memory_care_migration_downgrades_to_0002_and_back(sql_url: str) -> None:
    from alembic import command

    from storage.sql.store import alembic_config

    store = SQLConversationStore(sql_url)
    await store.start()
    try:
        async with store.engine.begin() as conn:
            await conn.execute(schema.memories.delete())
        await store.add_memories([memory("a1", text="Alice: kept across the care downgrade")])
        await store.supersede_memory("discord:1", "a1", superseded_by="a2", at=at(1))

        def migrate(conn: sa.Connection, target: str) -> list[str]:
            config = alembic_config(conn)
            (command.downgrade if target == "0002" else command.upgrade)(config, target)
            return [c["name"] for c in sa.inspect(conn).get_columns("memories")]

        async with store.engine.begin() as conn:
            columns = await conn.run_sync(migrate, "0002")
            version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar_one()
        assert version == "0002"
        assert "superseded_by" not in columns and "mentions" not in columns
        async with store.engine.begin() as conn:
            columns = await conn.run_sync(migrate, "head")
        assert "superseded_by" in columns and "mentions" in columns
        [state] = await store.memory_states("discord:1")
        assert (state.superseded_by, state.mentions) == (None, 1)  # history is gone with the column
        assert await keyword_ids(store, "discord:1", "downgrade") == ["a1"]  # the index survived
    finally:
        await store.aclose()


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"persona": "friendly", "limits": {"per_minute": 5, "ratio": 0.5}, "tags": ["a", "b"], "on": True},
        ["x", 1, 2.5, None, {"nested": []}],
        "plain string with ünïcode ✓",
        42,
        3.25,
        True,
        False,
        {},
        [],
    ],
    ids=["dict", "list", "str", "int", "float", "true", "false", "empty-dict", "empty-list"],
)
async def test_settings_json_round_trip(sql_store: SQLConversationStore, value: Any) -> None:
    await sql_store.set_setting("guild:discord:1", "key", value)
    got = await sql_store.get_setting("guild:discord:1", "key")
    assert got == value
    assert type(got) is type(value)


async def test_settings_overwrite_and_delete(sql_store: SQLConversationStore) -> None:
    assert await sql_store.get_setting("guild:discord:1", "persona") is None
    await sql_store.set_setting("guild:discord:1", "persona", "friendly")
    await sql_store.set_setting("guild:discord:1", "persona", {"name": "sage"})
    assert await sql_store.get_setting("guild:discord:1", "persona") == {"name": "sage"}
    assert len(await rows(sql_store, schema.settings)) == 1

    await sql_store.delete_setting("guild:discord:1", "persona")
    await sql_store.delete_setting("guild:discord:1", "persona")  # deleting nothing is fine
    assert await sql_store.get_setting("guild:discord:1", "persona") is None


async def test_settings_never_leak_between_scopes(sql_store: SQLConversationStore) -> None:
    await sql_store.set_setting("guild:discord:X", "persona", "pirate")
    await sql_store.set_setting("guild:discord:X", "rate", 3)
    assert await sql_store.get_setting("guild:discord:Y", "persona") is None
    assert await sql_store.get_setting("channel:discord:X", "persona") is None

    await sql_store.set_setting("guild:discord:Y", "persona", "poet")
    await sql_store.delete_setting("guild:discord:Y", "rate")
    assert await sql_store.get_setting("guild:discord:X", "persona") == "pirate"
    assert await sql_store.get_setting("guild:discord:X", "rate") == 3
    assert await sql_store.get_setting("guild:discord:Y", "persona") == "poet"


# --- erasure -----------------------------------------------------------------------------


async def test_forget_user_removes_only_that_user(sql_store: SQLConversationStore) -> None:
    alice, bob = "discord:1", "discord:2"
    for key in (alice, bob):
        await touch(sql_store, key, at(0))
    # A shared channel: each user's turn and the assistant's reply to it carry that user's key.
    await sql_store.add_message(message("a-q", user=alice, at_s=1))
    await sql_store.add_message(message("a-r", user=alice, at_s=2, role="assistant"))
    await sql_store.add_message(message("a-dm", user=alice, at_s=3, conversation="discord:dm1"))
    await sql_store.add_message(message("b-q", user=bob, at_s=4))
    await sql_store.add_message(message("b-r", user=bob, at_s=5, role="assistant"))
    await sql_store.add_memories([memory("a1", user=alice), memory("a2", user=alice), memory("b1", user=bob)])
    await sql_store.set_setting(alice, "preferred_name", "Al")
    await sql_store.set_setting(bob, "preferred_name", "Bobby")
    await sql_store.set_setting("guild:discord:g1", "persona", "pirate")

    before = {table.name: await rows(sql_store, table) for table in TABLES}
    removed = await sql_store.forget_user(alice)
    assert removed == 1 + 3 + 2 + 1  # profile, messages, memories, settings

    assert await sql_store.get_user(alice) is None
    assert await sql_store.user_messages(alice) == []
    assert await sql_store.count_memories(alice) == 0
    assert await sql_store.get_setting(alice, "preferred_name") is None
    after = {table.name: await rows(sql_store, table) for table in TABLES}
    owner_column = {"users": "user_key", "messages": "user_key", "memories": "user_key", "settings": "scope"}
    for name, column in owner_column.items():
        assert after[name] == [row for row in before[name] if row[column] != alice], name
    assert [row["id"] for row in after["messages"]] == ["b-q", "b-r"]
    assert {row["scope"] for row in after["settings"]} == {bob, "guild:discord:g1"}

    assert await sql_store.forget_user(alice) == 0


# --- lifecycle ---------------------------------------------------------------------------


async def test_ping_and_restart_keep_data(sql_url: str) -> None:
    store = SQLConversationStore(sql_url)
    await store.start()
    await store.start()  # a second start is a no-op
    try:
        await store.ping()
        await store.set_setting("guild:discord:restart", "k", [1])
    finally:
        await store.aclose()
    await store.aclose()
    with pytest.raises(BackendUnavailable):
        await store.ping()
    with pytest.raises(StorageError, match="start"):
        await store.get_setting("guild:discord:restart", "k")

    again = SQLConversationStore(sql_url)
    await again.start()  # the schema is already at head: nothing to migrate
    try:
        assert await again.get_setting("guild:discord:restart", "k") == [1]
        async with again.engine.connect() as conn:
            version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar_one()
        assert version == "0006"
        await again.delete_setting("guild:discord:restart", "k")
    finally:
        await again.aclose()


async def test_migrations_give_both_backends_the_same_schema(sql_pg_url: str, tmp_path: Path) -> None:
    def describe(conn: sa.Connection) -> dict[str, Any]:
        inspector = sa.inspect(conn)
        tables = {}
        # The keyword index differs per dialect by design (FTS5 tables | tsvector column + GIN).
        for table in sorted(inspector.get_table_names()):
            if schema.is_keyword_search_object(table, "table"):
                continue
            tables[table] = {
                "columns": [
                    (c["name"], c["nullable"])
                    for c in inspector.get_columns(table)
                    if not schema.is_keyword_search_object(c["name"], "column")
                ],
                "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]))
                    for i in inspector.get_indexes(table)
                    if not i.get("duplicates_constraint")  # PostgreSQL lists a UNIQUE's own index
                    and not schema.is_keyword_search_object(i["name"], "index")
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)
                ),
            }
        context = MigrationContext.configure(conn, opts={"include_object": schema.include_object})
        return {"tables": tables, "diff": compare_metadata(context, schema.metadata)}

    described = []
    for url in (f"sqlite:///{tmp_path}/schema.db", sql_pg_url):
        store = SQLConversationStore(url)
        await store.start()
        try:
            async with store.engine.connect() as conn:
                described.append(await conn.run_sync(describe))
        finally:
            await store.aclose()

    on_sqlite, on_postgres = described
    assert on_sqlite["diff"] == [], "SQLite schema differs from storage/sql/schema.py"
    assert on_postgres["diff"] == [], "PostgreSQL schema differs from storage/sql/schema.py"
    assert on_sqlite["tables"] == on_postgres["tables"]
    tables = {"alembic_version", "users", "messages", "memories", "settings", "vector_outbox"}
    assert set(on_sqlite["tables"]) == tables
    for table in TABLES:
        assert [c[0] for c in on_sqlite["tables"][table.name]["columns"]] == [c.name for c in table.columns]


async def test_unreachable_postgres_is_backend_unavailable_without_password() -> None:
    store = SQLConversationStore("postgresql://bob:s3cr3t-pw@127.0.0.1:1/whisper", connect_timeout_s=2)
    with pytest.raises(BackendUnavailable) as caught:
        await store.start()
    error = caught.value
    assert error.service == "PostgreSQL"
    assert error.variable == "DATABASE_URL"
    assert "DATABASE_URL" in str(error)
    assert "127.0.0.1:1" in str(error)
    assert "s3cr3t-pw" not in str(error)
    assert "s3cr3t-pw" not in error.detail


async def test_missing_postgres_database_is_backend_unavailable(sql_pg_url: str) -> None:
    url = make_url(sql_pg_url).set(database=f"absent_{uuid4().hex[:8]}", password="hunter2")
    store = SQLConversationStore(url.render_as_string(hide_password=False))
    with pytest.raises(BackendUnavailable) as caught:
        await store.start()
    assert caught.value.variable == "DATABASE_URL"
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:///data/whisperengine.db", "sqlite"),
        ("sqlite:////var/lib/we/db.sqlite", "sqlite"),
        ("sqlite:///:memory:", "sqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite"),
        ("postgresql://we:pw@db:5432/whisperengine", "postgresql"),
        ("postgres://we@db/whisperengine", "postgresql"),
        ("postgresql+asyncpg://we@db/whisperengine", "postgresql"),
    ],
)
def test_database_kind(url: str, kind: str) -> None:
    assert database_kind(url) == kind


@pytest.mark.parametrize(
    "url", ["mysql://root:hunter2@db/we", "mongodb://x", "postgresql+psycopg2://u@h/d", "not a url", ""]
)
def test_unsupported_database_url_is_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        database_kind(url)
    assert caught.value.variable == "DATABASE_URL"
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError):
        SQLConversationStore(url)


async def test_sqlite_file_setup(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "we.db"
    store = SQLConversationStore(f"sqlite:///{path}", busy_timeout_s=2.5)
    await store.start()
    try:
        assert path.is_file()
        async with store.engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
                for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
            }
        assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 2500, "synchronous": 1}
    finally:
        await store.aclose()


async def test_unusable_sqlite_path_is_backend_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SQLConversationStore(f"sqlite:///{blocker}/we.db")
    with pytest.raises(BackendUnavailable) as caught:
        await store.start()
    assert (caught.value.service, caught.value.variable) == ("SQLite", "DATABASE_URL")


async def test_sqlite_in_memory_database() -> None:
    store = SQLConversationStore("sqlite:///:memory:")
    await store.start()
    try:
        # One shared connection: concurrent calls must not commit or roll back each other's work.
        await asyncio.gather(
            *(store.add_message(message(f"m{i}", at_s=i)) for i in range(20)),
            *(store.recent_messages("discord:c1", 5) for _ in range(20)),
            *(touch(store, "discord:1", at(i)) for i in range(20)),
        )
        assert len(await store.recent_messages("discord:c1", 50)) == 20
        assert (await store.get_user("discord:1")).message_count == 20  # type: ignore[union-attr]
        assert await store.forget_user("discord:1") == 21
    finally:
        await store.aclose()


async def test_sqlite_keyword_search_leaves_out_words_too_common_to_rank(tmp_path: Path) -> None:
    store = SQLConversationStore(f"sqlite:///{tmp_path / 'kw.db'}", keyword_max_docs=3)
    await store.start()
    try:
        await store.add_memories(
            [memory(f"m{i}", at_s=i, text=f"Alice: coffee again at work {i}") for i in range(5)]
            + [memory("rare", at_s=9, text="Alice: my sister moved to Lisbon")]
        )
        # "coffee" is in five memories, over the cap of three: it alone finds nothing ...
        assert await store.keyword_search("discord:1", "coffee", 10) == []
        # ... and it does not drown the distinctive word next to it
        hits = await store.keyword_search("discord:1", "coffee in Lisbon", 10)
        assert [record.id for record, _ in hits] == ["rare"]
    finally:
        await store.aclose()
