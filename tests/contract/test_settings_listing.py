"""Contract of ``ConversationStore.settings_with_key`` (every scope's value of one setting, page
by page), on SQLite and PostgreSQL. PostgreSQL runs on a database created for this module and
dropped at its end (skipped without a server, failed under CI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.sql.schema import settings
from storage.sql.store import SQLConversationStore
from tests.conftest import fresh_postgres_database


@pytest.fixture(scope="module")
def listing_pg_url() -> Iterator[str]:
    with fresh_postgres_database("we_test_listing") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLConversationStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/settings.db"
    else:
        url = str(request.getfixturevalue("listing_pg_url"))
    store = SQLConversationStore(url)
    await store.start()
    async with store.engine.begin() as conn:  # the PostgreSQL database is shared by the module
        await conn.execute(settings.delete())
    try:
        yield store
    finally:
        await store.aclose()


async def all_pages(store: SQLConversationStore, key: str, page: int) -> list[list[tuple[str, Any]]]:
    pages: list[list[tuple[str, Any]]] = []
    after = ""
    while True:
        found = await store.settings_with_key(key, after_scope=after, limit=page)
        pages.append(found)
        if len(found) < page:
            return pages
        after = found[-1][0]


async def test_only_the_key_asked_for_every_scope_with_its_value(store: SQLConversationStore) -> None:
    await store.set_setting("telegram:2", "checkin", {"time": "08:00"})
    await store.set_setting("discord:1", "checkin", {"time": "21:30", "unanswered": 2})
    await store.set_setting("discord:1", "relationship", {"interactions": 3})
    await store.set_setting("guild:discord:9", "persona", "sage")
    await store.set_setting("discord:3", "checkin-notes", "not the same key")

    assert await store.settings_with_key("checkin") == [
        ("discord:1", {"time": "21:30", "unanswered": 2}),
        ("telegram:2", {"time": "08:00"}),
    ]
    assert await store.settings_with_key("persona") == [("guild:discord:9", "sage")]
    assert await store.settings_with_key("nothing") == []


async def test_pages_walk_every_scope_once_in_order(store: SQLConversationStore) -> None:
    scopes = [f"telegram:{n:03d}" for n in range(23)] + ["discord:5", "discord:50", "slack:U1"]
    for scope in scopes:
        await store.set_setting(scope, "checkin", {"who": scope})
        await store.set_setting(scope, "persona", "ember")  # other keys of the same scopes

    pages = await all_pages(store, "checkin", page=5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 5, 1]
    walked = [scope for page in pages for scope, _ in page]
    assert walked == sorted(walked) and sorted(walked) == sorted(scopes)
    assert all(value == {"who": scope} for page in pages for scope, value in page)


async def test_after_scope_and_limit(store: SQLConversationStore) -> None:
    for scope in ("a", "b", "c"):
        await store.set_setting(scope, "checkin", scope)
    assert await store.settings_with_key("checkin", after_scope="a") == [("b", "b"), ("c", "c")]
    assert await store.settings_with_key("checkin", after_scope="c") == []
    assert await store.settings_with_key("checkin", limit=1) == [("a", "a")]
    assert await store.settings_with_key("checkin", limit=0) == []


async def test_deleted_and_forgotten_settings_are_not_listed(store: SQLConversationStore) -> None:
    await store.set_setting("discord:1", "checkin", 1)
    await store.set_setting("discord:2", "checkin", 2)
    await store.set_setting("discord:3", "checkin", 3)
    await store.delete_setting("discord:1", "checkin")
    await store.forget_user("discord:2")
    assert await store.settings_with_key("checkin") == [("discord:3", 3)]
