"""The whole process (``build_app``) through its REST API while Redis and Chroma go away in the
middle of a conversation and come back: every message gets a reply and is stored, health says
what is degraded, and memory writes made meanwhile reach Chroma once it is back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp

from bot.app import App, build_app
from config.settings import Settings
from storage.cache.failover import FailoverCache
from storage.vector.outbox import DurableVectorMemory
from tests.fakes.chroma_server import ChromaServer
from tests.fakes.health import until
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.private_redis import PrivateRedis

REPLY = "That sounds wonderful, tell me more about it!"
USER_KEY = "web:alice"

MESSAGES = [
    "I have been sailing on the lake every summer since I was ten",
    "My sister Maria lives in Lisbon and teaches chemistry",
    "Yesterday I adopted a grey cat called Pebble from the shelter",
    "I am training for a half marathon in the spring",
    "Our old house had a big apple tree in the garden",
]


async def chat(session: aiohttp.ClientSession, app: App, text: str) -> dict[str, Any]:
    assert app.web is not None
    body = {"message": text, "user_id": "alice", "user_name": "Alice"}
    async with session.post(app.web.url + "api/chat", json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
    return result


async def health(session: aiohttp.ClientSession, app: App) -> tuple[int, dict[str, Any]]:
    assert app.web is not None
    async with session.get(app.web.url + "api/health") as response:
        return response.status, await response.json()


async def test_replies_go_on_while_redis_and_chroma_are_down(tmp_path: Path) -> None:
    async with PrivateRedis() as redis, ChromaServer() as chroma, FakeLLMServer(reply=REPLY) as llm:
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path,
            llm_backend="openai",
            openai_base_url=llm.openai_base_url,
            openai_api_key="test",
            llm_max_retries=0,
            redis_url=redis.url,
            redis_prefix=f"e2e{uuid4().hex[:8]}:",
            chroma_url=chroma.url,
            web_enabled=True,
            web_port=0,
            failover_probe_interval_s=0.2,
            memory_use_llm="off",
            rate_limit_messages=0,
        )
        async with build_app(settings) as app, aiohttp.ClientSession() as session:
            assert isinstance(app.cache, FailoverCache) and isinstance(app.vectors, DurableVectorMemory)
            first = await chat(session, app, MESSAGES[0])
            assert first["reply"] == REPLY and first["kind"] == "answer"
            await app.engine.writer.drain()
            assert await app.vectors.count(USER_KEY) == 1
            status, report = await health(session, app)
            assert status == 200 and report["status"] == "ok", report

            # Mid-conversation, both services go away.
            await asyncio.to_thread(redis.stop)
            await asyncio.to_thread(chroma.stop_keeping_data)
            for text in MESSAGES[1:4]:
                answer = await chat(session, app, text)
                assert answer["reply"] == REPLY and answer["kind"] == "answer"
            # The conversation so far still reached the model: the turns came from the store.
            history = llm.requests[-1].messages[1:-1]
            assert [m["content"] for m in history if m["role"] == "user"] == MESSAGES[:3]
            assert [m["content"] for m in history if m["role"] == "assistant"] == [REPLY] * 3
            await app.engine.writer.drain()
            status, report = await health(session, app)
            assert status == 200, report  # neither is a core component: the bot still answers
            assert report["status"] == "degraded"
            assert report["components"]["cache"]["status"] == "degraded"
            assert report["components"]["vectors"]["status"] == "degraded"
            # the three turns' memories wait in the database, in one to three group commits
            queued = app.vectors.pending
            assert 1 <= queued <= 3
            assert f"{queued} memory writes queued" in report["components"]["vectors"]["detail"]
            assert report["components"]["store"]["status"] == "ok"

            # Both come back; the cache returns to Redis, the queued writes reach Chroma.
            await asyncio.to_thread(redis.restart)
            await asyncio.to_thread(chroma.restart)
            cache, vectors = app.cache, app.vectors
            await until(lambda: cache.on_primary and vectors.pending == 0, "Redis and Chroma to be back")
            status, report = await health(session, app)
            assert status == 200 and report["status"] == "ok", report

            last = await chat(session, app, MESSAGES[4])
            assert last["reply"] == REPLY
            await app.engine.writer.drain()
            assert await app.vectors.count(USER_KEY) == len(MESSAGES)

            stored = await app.store.user_messages(USER_KEY)
            said = [m.content for m in stored if m.role == "user"]
            assert said == MESSAGES  # every message, in order
            assert [m.content for m in stored if m.role == "assistant"] == [REPLY] * len(MESSAGES)
