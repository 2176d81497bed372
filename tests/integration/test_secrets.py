"""Secrets stored at run time: encrypted in the real databases, unreadable without the key."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from config.settings import Settings
from engine.errors import ConfigError
from storage.secrets import PREFIX, SECRETS_SCOPE, SecretStore, apply_stored_secrets, storable_secrets
from storage.sql import SQLConversationStore
from tests.conftest import fresh_postgres_database

PLAINTEXT = "sk-live-Plain7Text9Api3Key"
KEY = Fernet.generate_key().decode()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLConversationStore]:
    store = SQLConversationStore(f"sqlite:///{tmp_path}/bot.db")
    await store.start()
    yield store
    await store.aclose()


def raw_sqlite_bytes(directory: Path) -> bytes:
    """The database file and its journal files, as stored on disk."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob("bot.db*")))


async def test_a_stored_secret_is_encrypted_on_disk_and_reads_back(
    sqlite_store: SQLConversationStore, tmp_path: Path
) -> None:
    secrets = SecretStore(sqlite_store, SecretStr(KEY))
    await secrets.set("openai_api_key", PLAINTEXT)
    assert await secrets.get("OPENAI_API_KEY") == PLAINTEXT
    assert await secrets.stored_names() == ["OPENAI_API_KEY"]

    rows = sqlite3.connect(tmp_path / "bot.db").execute("SELECT scope, key, value FROM settings").fetchall()
    assert [(scope, key) for scope, key, _ in rows] == [(SECRETS_SCOPE, "OPENAI_API_KEY")]
    assert PREFIX in rows[0][2] and PLAINTEXT not in rows[0][2]
    disk = raw_sqlite_bytes(tmp_path)
    assert PLAINTEXT.encode() not in disk and KEY.encode() not in disk

    assert await secrets.delete("OPENAI_API_KEY") is True
    assert await secrets.get("OPENAI_API_KEY") is None
    assert await secrets.delete("OPENAI_API_KEY") is False


async def test_a_stored_secret_is_encrypted_in_postgresql() -> None:
    with fresh_postgres_database("we_secrets") as url:
        store = SQLConversationStore(url)
        await store.start()
        try:
            await SecretStore(store, KEY).set("DISCORD_TOKEN", PLAINTEXT)
            assert await SecretStore(store, KEY).get("DISCORD_TOKEN") == PLAINTEXT
        finally:
            await store.aclose()
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT scope, key, value::text AS value FROM settings")
        finally:
            await conn.close()
    assert len(rows) == 1 and rows[0]["key"] == "DISCORD_TOKEN"
    assert PREFIX in rows[0]["value"] and PLAINTEXT not in rows[0]["value"]


async def test_storing_without_a_key_is_refused_naming_the_variable(
    sqlite_store: SQLConversationStore, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as refused:
        await SecretStore(sqlite_store, None).set("OPENAI_API_KEY", PLAINTEXT)
    assert refused.value.variable == "ENCRYPTION_KEY" and "ENCRYPTION_KEY" in str(refused.value)
    assert await sqlite_store.get_setting(SECRETS_SCOPE, "OPENAI_API_KEY") is None
    assert PLAINTEXT.encode() not in raw_sqlite_bytes(tmp_path)


async def test_a_key_that_is_not_a_fernet_key_is_a_clear_error(sqlite_store: SQLConversationStore) -> None:
    with pytest.raises(ConfigError, match="not a Fernet key") as refused:
        await SecretStore(sqlite_store, "correct horse battery staple").set("OPENAI_API_KEY", PLAINTEXT)
    assert refused.value.variable == "ENCRYPTION_KEY"


async def test_a_wrong_key_is_a_clear_error_never_the_plaintext_of_another_key(
    sqlite_store: SQLConversationStore,
) -> None:
    await SecretStore(sqlite_store, KEY).set("OPENAI_API_KEY", PLAINTEXT)
    with pytest.raises(ConfigError, match="stored with another key") as refused:
        await SecretStore(sqlite_store, Fernet.generate_key().decode()).get("OPENAI_API_KEY")
    assert refused.value.variable == "ENCRYPTION_KEY"


async def test_only_secret_settings_can_be_stored(sqlite_store: SQLConversationStore) -> None:
    names = storable_secrets()
    assert {"OPENAI_API_KEY", "DISCORD_TOKEN", "TELEGRAM_TOKEN", "SLACK_BOT_TOKEN"} <= set(names)
    assert "ENCRYPTION_KEY" not in names and "API_TOKEN" not in names
    for name in ("DATABASE_URL", "ENCRYPTION_KEY", "no such thing"):
        with pytest.raises(ConfigError, match="not a secret that can be stored"):
            await SecretStore(sqlite_store, KEY).set(name, "x")


async def test_start_up_fills_unset_secrets_and_the_environment_wins(
    sqlite_store: SQLConversationStore, tmp_path: Path
) -> None:
    secrets = SecretStore(sqlite_store, KEY)
    await secrets.set("OPENAI_API_KEY", PLAINTEXT)
    await secrets.set("TELEGRAM_TOKEN", "123:stored-telegram-token")
    settings = Settings(
        data_dir=tmp_path, encryption_key=SecretStr(KEY), telegram_token=SecretStr("123:from-the-env")
    )
    notes: list[str] = []
    filled, values = await apply_stored_secrets(settings, sqlite_store, notes)
    assert filled.openai_api_key is not None and filled.openai_api_key.get_secret_value() == PLAINTEXT
    assert (
        filled.telegram_token is not None and filled.telegram_token.get_secret_value() == "123:from-the-env"
    )
    assert values == [PLAINTEXT] and notes == []
    assert PLAINTEXT in filled.secrets()


@pytest.mark.parametrize("key", [None, Fernet.generate_key().decode(), "not-a-key"])
async def test_start_up_with_an_unusable_key_notes_it_and_goes_on(
    sqlite_store: SQLConversationStore, tmp_path: Path, key: str | None
) -> None:
    await SecretStore(sqlite_store, KEY).set("OPENAI_API_KEY", PLAINTEXT)
    settings = Settings(data_dir=tmp_path, encryption_key=SecretStr(key) if key else None)
    notes: list[str] = []
    filled, values = await apply_stored_secrets(settings, sqlite_store, notes)
    assert filled.openai_api_key is None and values == []
    assert len(notes) == 1 and "OPENAI_API_KEY" in notes[0] and "ENCRYPTION_KEY" in notes[0]
    assert PLAINTEXT not in notes[0]


async def test_nothing_stored_needs_no_key(sqlite_store: SQLConversationStore, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    notes: list[str] = []
    assert await apply_stored_secrets(settings, sqlite_store, notes) == (settings, [])
    assert notes == []
