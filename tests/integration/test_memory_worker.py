"""``whisperengine worker``: two bot processes with ``MEMORY_WORKER=external`` only answer; the
memory work they queue in Redis is done by a worker process, and a worker killed in the middle
of it loses nothing and does nothing twice that shows.

Real processes on one PostgreSQL database, one Redis and one Chroma server; messages come in
through each bot's REST API, answered by the fake LLM.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from storage.sql import SQLConversationStore, schema
from storage.vector.chroma import ChromaVectorMemory
from tests.conftest import fresh_postgres_database, require_redis
from tests.fakes.bot_process import BotProcess, bot_environment
from tests.fakes.chroma_server import ChromaServer
from tests.fakes.llm_server import FakeLLMServer

pytestmark = pytest.mark.slow

PEOPLE = ["Ana", "Ben", "Chloe", "Dev", "Emi", "Femi"]
TOPICS = [
    "my sister {i} plays the cello in an orchestra in Porto",
    "I repaired an old bicycle number {i} in the garage yesterday",
    "our team {i} is migrating the billing service to Rust",
    "the bakery on corner {i} sells a rye bread I love",
    "I am training for a half marathon, week {i} of the plan",
    "my grandmother {i} taught me to make dumplings from scratch",
    "I finished reading a novel about lighthouse keeper {i}",
    "we adopted a grey kitten and named her Pebble {i}",
]
MESSAGES_PER_BOT = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database("we_memory_worker") as url:
        yield url


async def count_rows(database_url: str, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    store = SQLConversationStore(database_url)
    await store.start()
    try:
        async with store.engine.connect() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(table).where(*where))).scalar()
            )
    finally:
        await store.aclose()


async def until_rows(
    database_url: str, table: sa.Table, at_least: int, *where: sa.ColumnElement[bool]
) -> int:
    async with asyncio.timeout(240):
        while (found := await count_rows(database_url, table, *where)) < at_least:  # noqa: ASYNC110 - another process's rows
            await asyncio.sleep(0.25)
    return found


async def test_bots_only_answer_and_a_killed_worker_loses_nothing_and_repeats_nothing(
    tmp_path: Path, database_url: str
) -> None:
    redis_url = require_redis()
    prefix = f"test-worker:{uuid.uuid4().hex[:8]}:"
    async with (
        FakeLLMServer(reply="That sounds lovely, tell me more!") as llm,
        ChromaServer(tmp_path / "chroma") as chroma,
    ):
        shared = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": prefix,
            "CHROMA_URL": chroma.url,
            "RATE_LIMIT_MESSAGES": "0",
            "MEMORY_WORKER": "external",
            "MEMORY_USE_LLM": "off",
            "MEMORY_JOBS_ALIVE_S": "2",
        }
        ports = [free_port(), free_port()]
        bots = [
            BotProcess(
                bot_environment(
                    tmp_path / name,
                    llm_url=llm.openai_base_url,
                    WEB_ENABLED="true",
                    WEB_PORT=str(port),
                    **shared,
                ),
                tmp_path / f"{name}.log",
            )
            for name, port in zip(("bot-a", "bot-b"), ports, strict=True)
        ]
        workers = [
            BotProcess(
                bot_environment(tmp_path / name, llm_url=llm.openai_base_url, **shared),
                tmp_path / f"{name}.log",
                command="worker",
            )
            for name in ("worker-1", "worker-2")
        ]
        sent: list[tuple[str, str]] = []  # (user id, text)
        try:
            for bot in bots:
                bot.start()
            async with aiohttp.ClientSession() as http:
                for port, bot in zip(ports, bots, strict=True):
                    async with asyncio.timeout(180):
                        while True:
                            assert bot.running, bot.log_text()
                            try:
                                async with http.get(f"http://127.0.0.1:{port}/api/health") as resp:
                                    if resp.status in (200, 503):
                                        break
                            except aiohttp.ClientError:
                                pass
                            await asyncio.sleep(0.2)

                async def say(port: int, n: int) -> None:
                    person = PEOPLE[n % len(PEOPLE)]
                    text = f"{TOPICS[n % len(TOPICS)].format(i=n)}, {person} says"
                    user_id = f"{person.lower()}-{port}"
                    body = {"message": text, "user_id": user_id, "user_name": person}
                    async with http.post(f"http://127.0.0.1:{port}/api/chat", json=body) as resp:
                        assert resp.status == 200, await resp.text()
                        assert (await resp.json())["reply"]
                    sent.append((user_id, text))

                await asyncio.gather(*(say(port, n) for port in ports for n in range(MESSAGES_PER_BOT)))
            total = len(sent)
            # the bots answered everything and stored the messages; the memory work waits for a worker
            assert await count_rows(database_url, schema.messages, schema.messages.c.role == "user") == total
            await asyncio.sleep(1.0)
            assert await count_rows(database_url, schema.memories) == 0
            assert await count_rows(database_url, schema.messages, schema.messages.c.role == "assistant") == 0

            # the first worker is killed part way through the jobs, the second finishes them
            workers[0].start()
            await until_rows(database_url, schema.messages, total // 4, schema.messages.c.role == "assistant")
            assert workers[0].kill() != 0
            workers[1].start()
            await until_rows(database_url, schema.messages, total, schema.messages.c.role == "assistant")
            client = aioredis.Redis.from_url(redis_url, decode_responses=True)
            try:
                async with asyncio.timeout(120):
                    while await client.scard(f"{prefix}jobs:memory-writer:unfinished"):  # noqa: ASYNC110 - in Redis
                        await asyncio.sleep(0.25)
            finally:
                await client.aclose()
        finally:
            codes = [process.stop() for process in (*bots, workers[1])]
        for process in (*bots, workers[1]):
            assert process.error_lines() == [], process.log_text()
        assert codes == [0, 0, 0]
        assert "jobs of a stopped process handed out again" in workers[1].log_text()

        # nothing lost, nothing twice: one reply row per message, and every message is in
        # exactly one memory (its own, or one it reinforced), none of them repeated
        assert await count_rows(database_url, schema.messages, schema.messages.c.role == "assistant") == total
        store = SQLConversationStore(database_url)
        vectors = ChromaVectorMemory.http(chroma.url)
        await store.start()
        await vectors.start()
        try:
            for user_id in {user for user, _ in sent}:
                user_key = f"web:{user_id}"
                said = {text for user, text in sent if user == user_id}
                memories = await store.list_memories(user_key, limit=1000)
                sources = Counter(source for m in memories for source in m.source_message_ids)
                assert all(n == 1 for n in sources.values()), sources
                remembered = {m.content for m in await store.user_messages(user_key, 1000) if m.id in sources}
                assert remembered == said
                texts = Counter(m.text for m in memories)
                assert all(n == 1 for n in texts.values()), texts
                assert await vectors.count(user_key) == len(memories)
        finally:
            await vectors.aclose()
            await store.aclose()
