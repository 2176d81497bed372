"""``ConversationStore.merge_users`` on every SQL backend (SQLite, PostgreSQL): what linking two
accounts does to the rows. Checked through the port and by reading the tables directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.ports import MemoryRecord, MergedUser, StoredMessage
from storage.sql import schema
from storage.sql.store import SQLConversationStore
from tests.conftest import fresh_postgres_database

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
DISCORD, TELEGRAM, OTHER = "discord:111", "telegram:222", "slack:U333"


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_postgres_database("we_test_merge") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLConversationStore]:
    url = f"sqlite:///{tmp_path}/merge.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = SQLConversationStore(url)
    await store.start()
    async with store.engine.begin() as conn:  # the PostgreSQL database is shared by the module
        for table in (schema.users, schema.messages, schema.memories, schema.settings):
            await conn.execute(table.delete())
    try:
        yield store
    finally:
        await store.aclose()


async def touch(store: SQLConversationStore, user_key: str, seen_at: datetime, name: str) -> None:
    platform, user_id = user_key.split(":")
    await store.touch_user(user_key, platform=platform, user_id=user_id, display_name=name, seen_at=seen_at)


def message(id: str, user_key: str, days: float, role: str = "user") -> StoredMessage:
    platform, user_id = user_key.split(":")
    return StoredMessage(
        id=id,
        conversation_key=f"{platform}:chan-{user_id}",
        user_key=user_key,
        role=role,  # type: ignore[arg-type]
        content=f"message {id}",
        platform=platform,
        channel_id=f"chan-{user_id}",
        created_at=at(days),
    )


def memory(id: str, user_key: str, text: str, days: float) -> MemoryRecord:
    return MemoryRecord(id=id, user_key=user_key, text=text, created_at=at(days), platform=user_key[:7])


async def table(store: SQLConversationStore, t: sa.Table, *where: Any) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(sa.select(t).where(*where))]


async def seed(store: SQLConversationStore) -> None:
    """Two accounts of one person, and somebody else."""
    for days in (10, 11, 12):
        await touch(store, DISCORD, at(days), "dana")
    for days in (2, 20):
        await touch(store, TELEGRAM, at(days), "Dana T")
    await touch(store, OTHER, at(1), "olga")
    await store.set_preferred_name(TELEGRAM, "Dee")
    for i, (user, days) in enumerate(
        [(DISCORD, 10), (DISCORD, 11), (TELEGRAM, 2), (TELEGRAM, 20), (OTHER, 1)]
    ):
        await store.add_message(message(f"m{i}", user, days))
        await store.add_message(message(f"r{i}", user, days + 0.001, role="assistant"))
    await store.add_memories(
        [
            memory("d1", DISCORD, "dana: my bike is a green gravel bike", 10),
            memory("t1", TELEGRAM, "Dana T: my sister Ilse lives in Utrecht", 2),
            memory("t2", TELEGRAM, "Dana T: I play the cello on Sundays", 20),
            memory("o1", OTHER, "olga: my cello teacher is strict", 1),
        ]
    )
    await store.supersede_memory(TELEGRAM, "t1", superseded_by="t2", at=at(21))
    await store.set_setting(DISCORD, "persona", "sage")
    await store.set_setting(TELEGRAM, "persona", "ember")  # target's value wins
    await store.set_setting(TELEGRAM, "timezone", "Europe/Amsterdam")  # moves
    await store.set_setting(OTHER, "timezone", "Asia/Tokyo")


async def test_merge_moves_messages_memories_settings_and_combines_profiles(
    store: SQLConversationStore,
) -> None:
    await seed(store)
    merged = await store.merge_users(TELEGRAM, DISCORD)

    assert merged.messages == 4 and merged.settings == 1 and merged.profile
    assert sorted(merged.memory_ids) == ["t1", "t2"]
    profile = await store.get_user(DISCORD)
    assert profile is not None
    assert profile.message_count == 5  # 3 + 2
    assert profile.first_seen == at(2) and profile.last_seen == at(20)
    assert profile.display_name == "dana" and profile.preferred_name == "Dee"  # discord had none
    assert (profile.platform, profile.user_id) == ("discord", "111")
    assert await store.get_user(TELEGRAM) is None

    ids = [m.id for m in await store.user_messages(DISCORD)]
    assert sorted(ids) == ["m0", "m1", "m2", "m3", "r0", "r1", "r2", "r3"]
    assert await store.user_messages(TELEGRAM) == []
    assert await store.count_memories(DISCORD) == 3 and await store.count_memories(TELEGRAM) == 0
    # care fields travel with the memory; keyword search finds moved memories for the new owner
    [state] = await store.memory_states(DISCORD, ["t1"])
    assert state.superseded_by == "t2"
    found = await store.keyword_search(DISCORD, "cello Sundays", 5)
    assert [m.id for m, _ in found] == ["t2"]
    assert await store.keyword_search(TELEGRAM, "cello", 5) == []

    assert await store.get_setting(DISCORD, "persona") == "sage"
    assert await store.get_setting(DISCORD, "timezone") == "Europe/Amsterdam"
    assert await table(store, schema.settings, schema.settings.c.scope == TELEGRAM) == []


async def test_merge_leaves_everyone_else_alone(store: SQLConversationStore) -> None:
    await seed(store)
    before = {
        t.name: await table(store, t, t.c[key] == OTHER)
        for t, key in (
            (schema.users, "user_key"),
            (schema.messages, "user_key"),
            (schema.memories, "user_key"),
            (schema.settings, "scope"),
        )
    }
    await store.merge_users(TELEGRAM, DISCORD)
    for t, key in (
        (schema.users, "user_key"),
        (schema.messages, "user_key"),
        (schema.memories, "user_key"),
        (schema.settings, "scope"),
    ):
        assert await table(store, t, t.c[key] == OTHER) == before[t.name]
    assert [m.id for m, _ in await store.keyword_search(OTHER, "cello", 5)] == ["o1"]


async def test_merge_into_an_account_without_a_profile_renames_it(store: SQLConversationStore) -> None:
    await seed(store)
    merged = await store.merge_users(TELEGRAM, "web:newcomer")
    profile = await store.get_user("web:newcomer")
    assert merged.profile and profile is not None
    assert (profile.platform, profile.user_id, profile.message_count) == ("web", "newcomer", 2)
    assert profile.preferred_name == "Dee" and profile.first_seen == at(2)
    assert await store.get_user(TELEGRAM) is None


async def test_merging_again_moves_only_what_came_since(store: SQLConversationStore) -> None:
    await seed(store)
    await store.merge_users(TELEGRAM, DISCORD)
    assert await store.merge_users(TELEGRAM, DISCORD) == MergedUser()  # nothing left to move

    # a message stored for the old account while the link was being made
    await touch(store, TELEGRAM, at(30), "Dana T")
    await store.add_message(message("late", TELEGRAM, 30))
    await store.add_memories([memory("late-memory", TELEGRAM, "Dana T: my flat is on the fourth floor", 30)])
    late = await store.merge_users(TELEGRAM, DISCORD)
    assert late.messages == 1 and late.memory_ids == ("late-memory",)
    profile = await store.get_user(DISCORD)
    assert profile is not None and profile.message_count == 6 and profile.last_seen == at(30)


async def test_merging_a_user_into_itself_is_refused(store: SQLConversationStore) -> None:
    with pytest.raises(ValueError, match="itself"):
        await store.merge_users(DISCORD, DISCORD)
