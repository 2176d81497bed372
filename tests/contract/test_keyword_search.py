"""``ConversationStore.keyword_search`` on every SQL backend (SQLite FTS5, PostgreSQL tsvector):
what a search finds and in which order, through the port; on PostgreSQL also the per-user term
counts (``memory_terms``) it ranks with, read directly and compared with a recount.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.ports import MemoryRecord
from storage.sql import schema
from storage.sql.store import SQLConversationStore
from tests.conftest import fresh_postgres_database

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
ALICE, BOB = "discord:111111111111111111", "discord:222222222222222222"

OpenStore = Callable[..., Awaitable[SQLConversationStore]]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_postgres_database("we_test_keyword") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens the backend's store (keyword options as given), emptied; closes it afterwards."""
    url = (
        f"sqlite:///{tmp_path}/keyword.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    opened: list[SQLConversationStore] = []

    async def open_(**options: int) -> SQLConversationStore:
        store = SQLConversationStore(url, **options)
        await store.start()
        opened.append(store)
        async with store.engine.begin() as conn:  # the PostgreSQL database is shared by the module
            for table in (schema.users, schema.messages, schema.memories, schema.settings):
                await conn.execute(table.delete())
        return store

    try:
        yield open_
    finally:
        for store in opened:
            await store.aclose()


@pytest.fixture
async def store(open_store: OpenStore) -> SQLConversationStore:
    return await open_store()


def memory(id: str, text: str, *, user: str = ALICE, minutes: int = 0) -> MemoryRecord:
    return MemoryRecord(
        id=id,
        user_key=user,
        text=text,
        created_at=T0 + timedelta(minutes=minutes),
        kind="message",
        platform="discord",
        channel_id="c1",
        source_message_ids=(f"src-{id}",),
    )


CHORES = ("laundry", "dishes", "groceries", "vacuuming", "ironing", "recycling", "mopping")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def fillers(n: int, *, user: str = ALICE, prefix: str = "f") -> list[MemoryRecord]:
    """Memories that match none of the words the tests search for (at most 49 different ones)."""
    return [
        memory(
            f"{prefix}{i}",
            f"Alice: did the {CHORES[i % 7]} on {DAYS[i // 7 % 7]}",
            user=user,
            minutes=100 + i,
        )
        for i in range(n)
    ]


async def ids(store: SQLConversationStore, query: str, k: int = 10, user: str = ALICE) -> list[str]:
    return [record.id for record, _ in await store.keyword_search(user, query, k)]


# --- ranking -----------------------------------------------------------------------------


async def test_a_rare_word_outranks_a_common_one(store: SQLConversationStore) -> None:
    common = [memory(f"coffee{i}", f"Alice: coffee at work again, cup {i}", minutes=i) for i in range(12)]
    rare = memory("lisbon", "Alice: my sister moved to Lisbon in spring", minutes=50)
    await store.add_memories([rare, *common, *fillers(12)])  # the rare one oldest: ties go to the newest

    for query in ("coffee Lisbon", "Lisbon coffee", "any coffee news from lisbon?"):
        found = await store.keyword_search(ALICE, query, 20)
        assert found[0][0].id == "lisbon", query
        assert len(found) == 13  # the common word still finds its memories, below
        scores = [score for _, score in found]
        assert scores == sorted(scores, reverse=True)
        assert scores[0] > scores[1]


async def test_more_matched_words_rank_higher(store: SQLConversationStore) -> None:
    await store.add_memories(
        [
            memory("dog", "Alice: the dog chased a red ball all afternoon", minutes=1),
            memory("three", "Alice: the dog had a swim in the lake all afternoon", minutes=2),
            memory("lake", "Alice: we rowed across the lake all afternoon", minutes=3),
            memory("four", "Alice: the dog had a swim in the lake by the boathouse", minutes=4),
            *fillers(12),
        ]
    )
    found = await ids(store, "did the dog swim in the lake?")
    assert set(found[:2]) == {"three", "four"}  # the three words matched
    assert set(found[2:]) == {"dog", "lake"}  # one word matched
    found = await ids(store, "boathouse dog lake swimming")
    assert found[:2] == ["four", "three"] and set(found[2:]) == {"dog", "lake"}


async def test_k_is_honoured(store: SQLConversationStore) -> None:
    await store.add_memories(
        [
            memory(f"m{i}", f"Alice: pottery class number {i}" + " pottery" * (i % 3), minutes=i)
            for i in range(30)
        ]
    )
    for k in (1, 5, 29):
        found = await store.keyword_search(ALICE, "pottery", k)
        assert len(found) == k
        assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
    assert len(await store.keyword_search(ALICE, "pottery", 100)) == 30
    assert await store.keyword_search(ALICE, "pottery", 0) == []
    assert await store.keyword_search(ALICE, "pottery", -3) == []
    # the best five are the first five of a longer list
    assert await ids(store, "pottery", 5) == (await ids(store, "pottery", 30))[:5]


# --- what never comes back -----------------------------------------------------------------


async def test_superseded_and_erased_memories_never_come_back(store: SQLConversationStore) -> None:
    await store.add_memories(
        [
            memory("old", "Alice: I live in Berlin near the canal", minutes=1),
            memory("new", "Alice: I live in Lisbon near the river", minutes=2),
            memory("deleted", "Alice: Berlin winters are long", minutes=3),
            memory("kept", "Alice: the canal froze in Berlin once", minutes=4),
            *fillers(8),
        ]
    )
    assert await store.supersede_memory(ALICE, "old", superseded_by="new", at=T0 + timedelta(hours=1))
    assert await store.delete_memories(ALICE, ["deleted"]) == 1
    assert await ids(store, "berlin canal") == ["kept"]
    assert await ids(store, "live near the river in Berlin") == ["new", "kept"]

    await store.add_memories([replace(memory("kept", "Alice: the lake froze once"), created_at=T0)])
    assert await ids(store, "berlin canal") == []  # the old text of a rewritten memory is gone
    assert await ids(store, "lake froze") == ["kept"]

    await store.forget_user(ALICE)
    for query in ("berlin", "lisbon river", "lake", "laundry"):
        assert await ids(store, query) == []


async def test_a_search_never_returns_another_users_memory(store: SQLConversationStore) -> None:
    await store.add_memories(
        [
            memory("a1", "Alice: the secret word is marmalade"),
            *fillers(6),
            # Bob's memories match better: the word more often, and rarer words too
            memory("b1", "Bob: marmalade, marmalade, marmalade on quince toast", user=BOB),
            memory("b2", "Bob: quince marmalade from Seville", user=BOB),
            *fillers(30, user=BOB, prefix="bf"),
        ]
    )
    assert await ids(store, "marmalade") == ["a1"]
    assert await ids(store, "quince marmalade from Seville") == ["a1"]
    assert await ids(store, "quince Seville") == []
    assert set(await ids(store, "marmalade", user=BOB)) == {"b1", "b2"}
    assert await ids(store, "marmalade", user="discord:333333333333333333") == []
    # Bob's fillers have the same texts as Alice's
    assert set(await ids(store, "laundry dishes", k=50)) == {"f0", "f1"}
    bobs = {m.id for m in fillers(30, user=BOB, prefix="bf") if "laundry" in m.text or "dishes" in m.text}
    assert set(await ids(store, "laundry dishes", k=50, user=BOB)) == bobs


@pytest.mark.parametrize(
    "query",
    [
        "the and of",
        "what was it that you were doing?",
        "?!... ,,, ;;; --- ***",
        "   \t\n ",
        "",
        "😀🎉🙏",
        "\u2014 \u2013 \u2026 \u00ab \u00bb \u201c \u201d \u2018 \u2019",
        "日本語のテキスト",
        "Ωμέγα ß İstanbul ﬁ",
        "e\u0301 \u200b\u200d \ufeff",
        "'\"\\ %_ $1 :word @@ <-> !x & | *",
    ],
)
async def test_stop_words_punctuation_and_other_scripts_find_nothing(
    store: SQLConversationStore, query: str
) -> None:
    await store.add_memories([memory("a1", "Alice: marmalade and toast for breakfast"), *fillers(5)])
    assert await store.keyword_search(ALICE, query, 10) == []


async def test_words_in_other_scripts_are_found(store: SQLConversationStore) -> None:
    await store.add_memories(
        [
            memory("greek", "Alice: I learned the word Ωμέγα today"),
            memory("german", "Alice: die Straße war nass"),
            *fillers(5),
        ]
    )
    assert await ids(store, "ωμέγα") == ["greek"]
    assert await ids(store, "STRAßE") == ["german"]


# --- bounded cost ---------------------------------------------------------------------------


async def test_words_in_more_than_max_docs_memories_find_nothing_alone(open_store: OpenStore) -> None:
    store = await open_store(keyword_max_docs=4)
    await store.add_memories(
        [memory(f"c{i}", f"Alice: coffee again at work {i}", minutes=i) for i in range(6)]
        + [memory("rare", "Alice: my sister moved to Lisbon", minutes=10), *fillers(4)]
    )
    assert await store.keyword_search(ALICE, "coffee", 10) == []
    assert await ids(store, "coffee in Lisbon") == ["rare"]
    assert await ids(store, "work coffee") == []


# --- PostgreSQL: the term counts ----------------------------------------------------------------


async def term_counts(store: SQLConversationStore) -> dict[tuple[str, str], int]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT user_key, term, memories FROM memory_terms"))
        return {(user_key, term): n for user_key, term, n in rows}


async def recount(store: SQLConversationStore) -> dict[tuple[str, str], int]:
    """What the counts should be, from the memories themselves."""
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT m.user_key, t.term, count(*) FROM memories AS m, "
                "unnest(tsvector_to_array(m.text_search) || '{\"\"}'::text[]) AS t(term) "
                "WHERE m.superseded_by IS NULL GROUP BY m.user_key, t.term"
            )
        )
        return {(user_key, term): n for user_key, term, n in rows}


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[SQLConversationStore]:
    store = SQLConversationStore(pg_url)
    await store.start()
    async with store.engine.begin() as conn:
        for table in (schema.users, schema.messages, schema.memories, schema.settings):
            await conn.execute(table.delete())
    try:
        yield store
    finally:
        await store.aclose()


async def test_postgres_term_counts_follow_every_write(pg_store: SQLConversationStore) -> None:
    store = pg_store
    carol = "telegram:333"
    await store.add_memories(
        [memory(f"a{i}", f"Alice: walked the dog to the lake, day {i}", minutes=i) for i in range(5)]
        + [memory("b1", "Bob: the lake was cold", user=BOB)]
    )
    counts = await term_counts(store)
    assert counts[(ALICE, "")] == 5 and counts[(ALICE, "lake")] == 5 and counts[(ALICE, "dog")] == 5
    assert counts[(BOB, "")] == 1 and counts[(BOB, "cold")] == 1
    assert counts == await recount(store)

    # writes that change what is searchable, and ones that do not, many at once
    at = T0 + timedelta(hours=1)
    await asyncio.gather(
        store.add_memories([memory("a0", "Alice: walked the cat to the river")]),  # rewritten text
        store.add_memories([memory("a1", "Alice: walked the dog to the lake, day 1")]),  # same text
        store.supersede_memory(ALICE, "a2", superseded_by="a0", at=at),
        store.delete_memories(ALICE, ["a3"]),
        store.mark_memories_used(ALICE, ["a4", "a1"], at=at),
        store.reinforce_memory(ALICE, "a4", source_message_id="s", at=at, importance_delta=0.1),
        *(store.add_memories([memory(f"c{i}", f"Carol: lake swim {i}", user=carol)]) for i in range(10)),
    )
    counts = await term_counts(store)
    assert counts == await recount(store)
    assert counts[(ALICE, "")] == 3 and counts[(ALICE, "cat")] == 1 and counts[(ALICE, "dog")] == 2
    assert counts[(carol, "")] == 10

    merged = await store.merge_users(carol, BOB)
    assert len(merged.memory_ids) == 10
    counts = await term_counts(store)
    assert counts == await recount(store)
    assert counts[(BOB, "lake")] == 11 and not any(user == carol for user, _ in counts)

    await store.forget_user(ALICE)
    counts = await term_counts(store)
    assert counts == await recount(store)
    assert not any(user == ALICE for user, _ in counts)  # no word of a forgotten user is left


async def test_postgres_common_words_rank_what_rarer_ones_find(
    pg_store: SQLConversationStore, pg_url: str
) -> None:
    store = SQLConversationStore(pg_url, keyword_max_docs=4)  # SQLite leaves such words out
    await store.start()
    try:
        await store.add_memories(
            [memory(f"c{i}", f"Alice: coffee again at work {i}", minutes=i) for i in range(6)]
            + [
                memory("lisbon", "Alice: my sister moved to Lisbon", minutes=10),
                memory("both", "Alice: my sister drinks coffee in Lisbon", minutes=5),
                *fillers(4),
            ]
        )
        assert await ids(store, "coffee in Lisbon") == ["both", "lisbon"]
        assert await ids(store, "Lisbon") == ["lisbon", "both"]  # one word each: the shorter text first
    finally:
        await store.aclose()


async def test_postgres_term_counts_migration_downgrades_and_recounts(pg_store: SQLConversationStore) -> None:
    from alembic import command

    from storage.sql.store import alembic_config

    store = pg_store
    await store.add_memories([memory("a1", "Alice: kept across the downgrade"), *fillers(3)])

    def migrate(conn: sa.Connection, target: str) -> list[str]:
        config = alembic_config(conn)
        (command.downgrade if target == "0005" else command.upgrade)(config, target)
        return sa.inspect(conn).get_table_names()

    async with store.engine.begin() as conn:
        tables = await conn.run_sync(migrate, "0005")
    assert schema.KEYWORD_TERMS_TABLE not in tables
    await store.add_memories([memory("a2", "Alice: written while the counts were gone")])
    async with store.engine.begin() as conn:
        tables = await conn.run_sync(migrate, "head")
    assert schema.KEYWORD_TERMS_TABLE in tables
    counts = await term_counts(store)
    assert counts == await recount(store) and counts[(ALICE, "")] == 5
    assert await ids(store, "downgrade") == ["a1"]
    assert await ids(store, "counts gone") == ["a2"]
