"""Linking two accounts of one person into one identity, on the real stores.

A real ``Engine`` (fake LLM that records its prompts, fake embedder) with an ``IdentityLinker``,
backed by the real SQL store (SQLite; PostgreSQL in a database of its own), embedded Chroma
and the real cache (in-process; Redis under a unique key prefix). Dana talks to the bot on
Discord and on Telegram, links the two accounts with a code, and from then on both accounts
are one identity: profile, messages, memories (rows and vectors), relationship and settings
merged; recall and writes on either account use the merged memories; export and forget cover
both accounts. Codes work once, expire, cannot be redeemed by the account that asked for them,
and an account may try only a few.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa

from config.settings import PACKAGED_PERSONAS
from engine.errors import InputError, LinkRefused
from engine.events import ChatMessage, UniversalMessage
from engine.identity import CODE_ALPHABET, CODE_LENGTH, IdentityLinker, LinkResult, link_instructions
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine
from engine.ports import Cache
from engine.relationship import RELATIONSHIP_SETTING
from storage.sql import SQLConversationStore
from storage.vector.chroma import ChromaVectorMemory
from tests.fakes.ports import FakeEmbedder, FakeLLM
from tests.integration.conftest import cache_entries, started_store

DISCORD, TELEGRAM = "discord:5150", "telegram:7007"
SLACK, WEB = "slack:U42", "web:visitor"
WORDS = ("gravelbike", "glassblower", "ilseutrecht", "lapsangtea")


@dataclass(slots=True)
class Kit:
    engine: Engine
    llm: FakeLLM
    store: SQLConversationStore
    cache: Cache
    vectors: ChromaVectorMemory
    embedder: FakeEmbedder
    identity: IdentityLinker

    async def say(self, user_key: str, text: str, name: str = "Dana") -> str:
        platform, user_id = user_key.split(":")
        message = UniversalMessage(
            content=text,
            user_id=user_id,
            user_name=name,
            platform=platform,
            channel_id=f"dm-{user_id}",
            is_direct=True,
        )
        return (await self.engine.handle(message).collect()).content

    def last_prompt(self) -> str:
        return "\n".join(m.content for m in self.llm.prompts[-1])

    async def settle(self) -> None:
        await self.engine.writer.drain()
        await self.engine.relationships.drain()


async def make_kit(sql_url: str, cache: Cache, tmp_path: Path, **linker: float) -> AsyncIterator[Kit]:
    async with started_store(sql_url) as store:
        vectors = ChromaVectorMemory.embedded(tmp_path / "chroma", collection_prefix=f"l{uuid4().hex[:8]}")
        await vectors.start()
        embedder = FakeEmbedder()

        def echo(messages: list[ChatMessage]) -> str:
            return "Noted."

        identity = IdentityLinker(store, cache, vectors, embedder, **linker)
        llm = FakeLLM(echo)
        engine = Engine(
            llm=llm,
            store=store,
            cache=cache,
            personas=PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store),
            recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.05, keywords=store),
            writer=MemoryWriter(store, vectors, embedder),
            bot_name="Ember",
            identity=identity,
        )
        await engine.start()
        try:
            yield Kit(engine, llm, store, cache, vectors, embedder, identity)
        finally:
            await engine.aclose()
            await vectors.aclose()


@pytest.fixture
async def kit(sql_url: str, any_cache: Cache, tmp_path: Path) -> AsyncIterator[Kit]:
    async for made in make_kit(sql_url, any_cache, tmp_path):
        yield made


@pytest.fixture
async def sqlite_kit(any_cache: Cache, tmp_path: Path) -> AsyncIterator[Kit]:
    """For the rules about codes, which live in the cache: SQLite and both caches."""
    async for made in make_kit(f"sqlite:///{tmp_path}/codes.db", any_cache, tmp_path, code_ttl_s=0.3):
        yield made


async def dana_on_two_platforms(kit: Kit) -> None:
    await kit.say(DISCORD, "my bike is a gravelbike with green tyres")
    await kit.say(DISCORD, "I work as a glassblower in a small studio")
    await kit.say(TELEGRAM, "my sister lives in ilseutrecht these days", name="Dana T")
    await kit.say(TELEGRAM, "please call me Dee from now on", name="Dana T")
    await kit.store.set_setting(TELEGRAM, "timezone", "Europe/Amsterdam")
    await kit.settle()


async def link(kit: Kit, canonical: str, other: str) -> LinkResult:
    issued = await kit.engine.start_link(canonical)
    return await kit.engine.link_accounts(other, issued.code)


async def memory_ids(kit: Kit, user_key: str) -> set[str]:
    return {m.id for m in await kit.store.list_memories(user_key, limit=1000)}


# --- merging -------------------------------------------------------------------------------


async def test_linking_merges_both_identities_into_one(kit: Kit) -> None:
    await dana_on_two_platforms(kit)
    telegram_memories = await memory_ids(kit, TELEGRAM)
    all_memories = await memory_ids(kit, DISCORD) | telegram_memories
    assert len(all_memories) == 4 and await kit.vectors.count(TELEGRAM) == 2

    result = await link(kit, DISCORD, TELEGRAM)

    assert (result.canonical, result.merged, result.accounts) == (DISCORD, TELEGRAM, (DISCORD, TELEGRAM))
    assert result.memories == 2 and result.messages == 4  # two messages and their two replies
    for account in (DISCORD, TELEGRAM):
        assert await kit.engine.resolve_user_key(account) == DISCORD
        assert await kit.engine.linked_accounts(account) == [DISCORD, TELEGRAM]
    # profile: counts summed, earliest first_seen, the preferred name kept
    profile = await kit.store.get_user(DISCORD)
    assert profile is not None and await kit.store.get_user(TELEGRAM) is None
    assert profile.message_count == 4 and profile.preferred_name == "Dee"
    # messages and memories (rows and vectors) belong to the one identity
    assert len(await kit.store.user_messages(DISCORD)) == 8 and await kit.store.user_messages(TELEGRAM) == []
    assert await memory_ids(kit, DISCORD) == all_memories and await memory_ids(kit, TELEGRAM) == set()
    assert await kit.vectors.count(DISCORD) == 4 and await kit.vectors.count(TELEGRAM) == 0
    moved = next(m for m in await kit.store.list_memories(DISCORD) if m.id in telegram_memories)
    [embedding] = await kit.embedder.embed([moved.text])
    [nearest] = await kit.vectors.query(DISCORD, embedding, 1)
    assert nearest.id == moved.id and nearest.similarity > 0.99 and nearest.metadata["platform"] == "telegram"
    # relationship and settings
    relationship = await kit.store.get_setting(DISCORD, RELATIONSHIP_SETTING)
    assert relationship["interactions"] == 4 and relationship["preferred_name"] == "Dee"
    assert await kit.store.get_setting(TELEGRAM, RELATIONSHIP_SETTING) is None
    assert await kit.store.get_setting(DISCORD, "timezone") == "Europe/Amsterdam"


async def test_after_linking_either_account_recalls_and_writes_the_shared_memories(kit: Kit) -> None:
    await dana_on_two_platforms(kit)
    await link(kit, DISCORD, TELEGRAM)

    await kit.say(TELEGRAM, "what kind of gravelbike do I ride?", name="Dana T")
    assert "green tyres" in kit.last_prompt(), "a Discord memory is recalled on Telegram"
    await kit.say(DISCORD, "where does my sister live? ilseutrecht?")
    assert "my sister lives in ilseutrecht" in kit.last_prompt(), "a Telegram memory is recalled on Discord"
    assert "Dee" in kit.last_prompt(), "the relationship (preferred name) is the merged one"

    await kit.say(TELEGRAM, "my favourite drink is lapsangtea with honey", name="Dana T")
    await kit.settle()
    [(found, _)] = await kit.store.keyword_search(DISCORD, "lapsangtea", 5)
    assert found.platform == "telegram" and found.user_key == DISCORD
    assert await kit.store.count_memories(TELEGRAM) == 0 and await kit.vectors.count(TELEGRAM) == 0
    profile = await kit.store.get_user(DISCORD)
    assert profile is not None and profile.message_count == 7 and await kit.store.get_user(TELEGRAM) is None

    export = await kit.engine.export_user(TELEGRAM)
    assert export["user_key"] == DISCORD and export["linked_accounts"] == [TELEGRAM]
    texts = " ".join(str(m["content"]) for m in export["messages"])  # type: ignore[attr-defined]
    assert all(word in texts for word in WORDS)


async def test_forget_after_linking_erases_both_accounts(kit: Kit) -> None:
    await dana_on_two_platforms(kit)
    await link(kit, DISCORD, TELEGRAM)
    await kit.say(TELEGRAM, "my favourite drink is lapsangtea with honey", name="Dana T")
    await kit.say("discord:9999", "I am somebody else entirely, a gravelbike fan", name="Eve")
    await kit.settle()

    removed = await kit.engine.forget_user(TELEGRAM)  # from the account that was merged

    assert removed > 0
    assert not [e for e in await cache_entries(kit.cache) if "5150" in e or "7007" in e]
    for account in (DISCORD, TELEGRAM):
        assert await kit.store.get_user(account) is None
        assert await kit.store.user_messages(account) == []
        assert await kit.store.count_memories(account) == 0
        assert await kit.vectors.count(account) == 0
        assert await kit.engine.resolve_user_key(account) == account, "the link is gone too"
        assert await kit.engine.linked_accounts(account) == [account]
    async with kit.store.engine.connect() as conn:
        settings = [tuple(r) for r in await conn.execute(sa.text("SELECT scope, key FROM settings"))]
        texts = [
            str(r[0])
            for r in await conn.execute(
                sa.text("SELECT content FROM messages UNION ALL SELECT text FROM memories")
            )
        ]
    assert not [s for s in settings if "5150" in s[0] or "7007" in s[0]]
    leftovers = " ".join(texts)
    assert "gravelbike fan" in leftovers, "the other user keeps everything"
    assert not [w for w in WORDS if w in leftovers.replace("gravelbike fan", "")]


async def test_linking_identities_that_already_have_links_joins_them_all(kit: Kit) -> None:
    await kit.say(SLACK, "my cat is called pepperoni the third", name="Dana S")
    await kit.say(WEB, "my favourite lake is lake bled in slovenia", name="Dana W")
    await link(kit, DISCORD, TELEGRAM)  # Dana's Discord + Telegram, before she ever chatted
    await link(kit, SLACK, WEB)  # ... and her Slack + web chat
    await kit.settle()

    result = await link(kit, TELEGRAM, SLACK)  # a code from Telegram, entered on Slack

    assert result.canonical == DISCORD and set(result.accounts) == {DISCORD, TELEGRAM, SLACK, WEB}
    for account in (DISCORD, TELEGRAM, SLACK, WEB):
        assert await kit.engine.resolve_user_key(account) == DISCORD
    await kit.say(WEB, "i swam in lake bled again last summer", name="Dana W")
    assert "lake bled in slovenia" in kit.last_prompt()
    await kit.say(TELEGRAM, "my cat pepperoni knocked a plant over today", name="Dana T")
    assert "pepperoni the third" in kit.last_prompt()
    await kit.settle()  # the two messages above are memories too, written in the background
    for merged in (TELEGRAM, SLACK, WEB):
        assert await kit.vectors.count(merged) == 0
    assert await kit.vectors.count(DISCORD) == await kit.store.count_memories(DISCORD) == 4
    with pytest.raises(LinkRefused) as refused:
        await link(kit, WEB, DISCORD)
    assert refused.value.reason == "already"


# --- codes -----------------------------------------------------------------------------------


async def test_a_code_is_short_unambiguous_and_says_where_it_goes(sqlite_kit: Kit) -> None:
    issued = await sqlite_kit.engine.start_link(DISCORD)
    assert len(issued.code) == CODE_LENGTH and set(issued.code) <= set(CODE_ALPHABET)
    assert not set(issued.code) & set("0O1IL")
    text = link_instructions(issued)
    assert f"/link {issued.code}" in text and "other account" in text and "expires in" in text
    codes = {(await sqlite_kit.engine.start_link(f"discord:{n}")).code for n in range(50)}
    assert len(codes) == 50


async def test_a_code_works_once(sqlite_kit: Kit) -> None:
    issued = await sqlite_kit.engine.start_link(DISCORD)
    await sqlite_kit.engine.link_accounts(TELEGRAM, issued.code.lower())  # case does not matter
    with pytest.raises(LinkRefused) as refused:
        await sqlite_kit.engine.link_accounts(SLACK, issued.code)
    assert refused.value.reason == "used" and "already used" in str(refused.value)
    assert await sqlite_kit.engine.resolve_user_key(SLACK) == SLACK


async def test_two_accounts_racing_for_one_code_link_only_one(sqlite_kit: Kit) -> None:
    issued = await sqlite_kit.engine.start_link(DISCORD)
    results = await asyncio.gather(
        sqlite_kit.engine.link_accounts(TELEGRAM, issued.code),
        sqlite_kit.engine.link_accounts(SLACK, issued.code),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["LinkRefused", "LinkResult"]
    assert await sqlite_kit.engine.linked_accounts(DISCORD) in ([DISCORD, TELEGRAM], [DISCORD, SLACK])


async def test_a_code_expires(sqlite_kit: Kit) -> None:
    issued = await sqlite_kit.engine.start_link(DISCORD)  # this kit's codes last 0.3 s
    await asyncio.sleep(0.5)
    with pytest.raises(LinkRefused) as refused:
        await sqlite_kit.engine.link_accounts(TELEGRAM, issued.code)
    assert refused.value.reason == "unknown" and "expired" in str(refused.value)


async def test_the_account_that_asked_cannot_redeem_its_own_code(sqlite_kit: Kit) -> None:
    issued = await sqlite_kit.engine.start_link(DISCORD)
    with pytest.raises(LinkRefused) as refused:
        await sqlite_kit.engine.link_accounts(DISCORD, issued.code)
    assert refused.value.reason == "own" and "other account" in str(refused.value)
    result = await sqlite_kit.engine.link_accounts(TELEGRAM, issued.code)  # still good elsewhere
    assert result.canonical == DISCORD


async def test_a_new_code_voids_the_previous_one(sqlite_kit: Kit) -> None:
    first = await sqlite_kit.engine.start_link(DISCORD)
    second = await sqlite_kit.engine.start_link(DISCORD)
    with pytest.raises(LinkRefused):
        await sqlite_kit.engine.link_accounts(TELEGRAM, first.code)
    assert (await sqlite_kit.engine.link_accounts(TELEGRAM, second.code)).canonical == DISCORD


async def test_unknown_and_malformed_codes_are_refused_clearly(sqlite_kit: Kit) -> None:
    with pytest.raises(LinkRefused) as unknown:
        await sqlite_kit.engine.link_accounts(TELEGRAM, "ABCD2345")
    assert unknown.value.reason == "unknown" and "unknown or has expired" in str(unknown.value)
    with pytest.raises(LinkRefused) as malformed:
        await sqlite_kit.engine.link_accounts(TELEGRAM, "hello?")
    assert malformed.value.reason == "malformed" and "letters and digits" in str(malformed.value)


async def test_guessing_is_cut_off_after_five_tries(sqlite_kit: Kit) -> None:
    issued = await sqlite_kit.engine.start_link(DISCORD)
    for guess in ("AAAA2222", "BBBB3333", "CCCC4444", "DDDD5555", "EEEE6666"):
        with pytest.raises(LinkRefused) as wrong:
            await sqlite_kit.engine.link_accounts(TELEGRAM, guess)
        assert wrong.value.reason == "unknown"
    with pytest.raises(LinkRefused) as cut_off:
        await sqlite_kit.engine.link_accounts(TELEGRAM, issued.code)  # even the right one, for now
    assert cut_off.value.reason == "too_many" and "wait" in str(cut_off.value)
    assert await sqlite_kit.engine.resolve_user_key(TELEGRAM) == TELEGRAM
    assert (await sqlite_kit.engine.link_accounts(SLACK, issued.code)).canonical == DISCORD  # per account


async def test_a_voided_code_no_longer_works(sqlite_kit: Kit) -> None:
    issued = await sqlite_kit.engine.start_link(DISCORD)
    assert await sqlite_kit.identity.void_code(f" {issued.code[:4]}-{issued.code[4:]} ")
    assert not await sqlite_kit.identity.void_code(issued.code)
    with pytest.raises(LinkRefused):
        await sqlite_kit.engine.link_accounts(TELEGRAM, issued.code)


async def test_an_engine_without_a_linker_says_linking_is_unavailable(sqlite_kit: Kit) -> None:
    engine = sqlite_kit.engine
    engine.identity = None
    with pytest.raises(InputError, match="isn't available"):
        await engine.start_link(DISCORD)
    assert await engine.resolve_user_key(TELEGRAM) == TELEGRAM
