"""Two ``whisperengine run`` processes share one bot: process A owns shard 0, process B shard 1,
both on the same PostgreSQL database, Redis and Chroma server, against the fake Discord gateway.

Every message gets exactly one reply; in each channel each person's messages are answered in
the order they were sent (a DM, one person, entirely in order) and every message's prompt holds
the channel's earlier messages; each process only receives the events of its own shard (DMs go
to shard 0)."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from storage.cache.redis import RedisCache
from storage.sql import SQLConversationStore
from tests.conftest import fresh_postgres_database, require_redis
from tests.fakes.bot_process import BotProcess, bot_environment, wait_until_connected
from tests.fakes.chroma_server import ChromaServer
from tests.fakes.discord_server import FakeDiscord, Guild, Json
from tests.fakes.llm_server import FakeLLMServer

pytestmark = pytest.mark.slow

TAG = re.compile(r"#(\d+)\b")
ROUNDS = 4


def answer(messages: list[dict[str, Any]]) -> str:
    """The fake model names the message it answers: ``Answer to #n.``"""
    found = TAG.findall(str(messages[-1]["content"]))
    return f"Answer to #{found[-1] if found else '?'}. That sounds lovely, tell me more!"


def guilds_by_shard(fake: FakeDiscord, per_shard: tuple[int, int]) -> dict[int, list[Guild]]:
    """``per_shard[s]`` guilds on shard s of 2 (shard = (guild_id >> 22) % 2)."""
    found: dict[int, list[Guild]] = {0: [], 1: []}
    while any(len(found[s]) < per_shard[s] for s in (0, 1)):
        guild = fake.add_guild(f"guild {len(fake.guilds)}")
        shard = (int(guild.id) >> 22) % 2
        if len(found[shard]) < per_shard[shard]:
            found[shard].append(guild)
        else:
            del fake.guilds[guild.id]
    return found


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database("we_two_processes") as url:
        yield url


@pytest.fixture
async def redis_prefix() -> Any:
    prefix = f"test-two-processes:{uuid.uuid4().hex}:"
    yield prefix
    cache = RedisCache(require_redis(), prefix=prefix)
    await cache.start()
    await cache.delete_prefix("")
    await cache.aclose()


def bot_tags(fake: FakeDiscord, channel_id: str) -> list[int]:
    """The message numbers the bot's messages in a channel answer, in the order they were posted."""
    return [
        int(m.group(1))
        for msg in fake.bot_messages(channel_id)
        if (m := re.match(r"Answer to #(\d+)\.", msg["content"]))
    ]


async def test_two_processes_share_the_shards_and_answer_everything_once_in_order(
    tmp_path: Path, database_url: str, redis_prefix: str
) -> None:
    redis_url = require_redis()
    async with (
        FakeDiscord() as fake,
        FakeLLMServer(reply=answer, delay_s=0.02) as llm,
        ChromaServer(tmp_path / "chroma") as chroma,
    ):
        guilds = guilds_by_shard(fake, (2, 3))
        users = [fake.add_user(f"user{i}") for i in range(6)]
        channels: dict[str, int] = {}  # channel id -> shard
        for shard, owned in guilds.items():
            for guild in owned:
                for user in users:
                    fake.add_member(guild, user)
                for name in ("general", "random"):
                    channels[fake.add_channel(guild, name)] = shard
        dm_owners = {fake.dm_channel(user): user for user in users[:3]}
        channels.update(dict.fromkeys(dm_owners, 0))

        shared = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": redis_prefix,
            "CHROMA_URL": chroma.url,
            "DISCORD_SHARD_COUNT": "2",
            "RATE_LIMIT_MESSAGES": "0",
            "DISCORD_EDIT_INTERVAL_S": "0.2",
        }
        bots = [
            BotProcess(
                bot_environment(
                    tmp_path / name,
                    discord=fake,
                    llm_url=llm.openai_base_url,
                    DISCORD_SHARD_IDS=str(shard),
                    **shared,
                ),
                tmp_path / f"{name}.log",
            )
            for shard, name in enumerate(("process-a", "process-b"))
        ]
        sent: dict[str, list[int]] = {channel: [] for channel in channels}
        author_of: dict[int, str] = {}
        ids: dict[int, Json] = {}
        try:
            for bot in bots:
                bot.start()
            await wait_until_connected(fake, 2, bots)
            assert sorted(p["shard"] for p in fake.identify_payloads) == [[0, 2], [1, 2]]

            async def send(channel_id: str, n: int) -> None:
                author = dm_owners.get(channel_id, users[n % len(users)])
                text = f"message #{n}: I went to the lake with my sister and we swam all day"
                in_guild = channel_id not in fake.dm_channels
                ids[n] = await fake.send_message(channel_id, author, text, mention_bot=in_guild)
                author_of[n] = str(author["id"])
                sent[channel_id].append(n)

            def answered(numbers: list[int]) -> bool:
                posted = {n for channel in channels for n in bot_tags(fake, channel)}
                return set(numbers) <= posted

            # The first message of each channel: the bots read its settings once and remember them.
            counter = 0
            for channel in channels:
                counter += 1
                await send(channel, counter)
            await fake.wait_for(lambda: answered(list(ids)), timeout_s=120)
            # Then rounds of messages across every channel, without waiting for replies.
            for _ in range(ROUNDS):
                for channel in channels:
                    counter += 1
                    await send(channel, counter)
            await fake.wait_for(lambda: answered(list(ids)), timeout_s=120)
        finally:
            codes = [bot.stop() for bot in bots]
        logs = {bot.log_path.name: bot.log_text() for bot in bots}
        assert codes == [0, 0], logs
        for bot in bots:
            assert bot.error_lines() == [], bot.log_text()

        # exactly one reply to every message; each person's in the order of their messages
        for channel, numbers in sent.items():
            tags = bot_tags(fake, channel)
            assert sorted(tags) == sorted(numbers), channel
            for author in {author_of[n] for n in numbers}:
                mine = [n for n in numbers if author_of[n] == author]
                assert [n for n in tags if author_of[n] == author] == mine, (channel, author)
        # each message was answered with the channel's earlier messages in its prompt
        for channel, numbers in sent.items():
            for earlier, later in itertools.pairwise(numbers):
                [prompt] = [
                    r.messages
                    for r in llm.requests
                    if r.messages and TAG.findall(str(r.messages[-1]["content"])) == [str(later)]
                ]
                assert any(f"message #{earlier}:" in str(m["content"]) for m in prompt[:-1]), (channel, later)
        for n, message in ids.items():
            if message.get("guild_id"):
                assert len(fake.replies_to(message["id"])) == 1, n

        # each process received only its own shard's messages
        for shard in (0, 1):
            expected = {
                ids[n]["id"]
                for channel, numbers in sent.items()
                if channels[channel] == shard
                for n in numbers
            }
            received = set(fake.delivered[(shard, 2)]) & {m["id"] for m in ids.values()}
            assert received == expected
        assert "in 2 servers" in logs["process-a.log"]
        assert "in 3 servers" in logs["process-b.log"]

        # the memory jobs went through the shared queue in Redis, and every one of them was done
        jobs = f"{redis_prefix}jobs:memory-writer:"
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert await client.scard(jobs + "unfinished") == 0
            assert await client.llen(jobs + "pending") == 0
        finally:
            await client.aclose()
        store = SQLConversationStore(database_url)
        await store.start()
        try:
            remembered = [await store.count_memories(f"discord:{user['id']}") for user in users]
        finally:
            await store.aclose()
        assert all(count > 0 for count in remembered), remembered
