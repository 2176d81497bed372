"""Fixtures for integration tests: a real ``Engine`` wired the way the composition root wires it.

SQLite store and in-process cache (real implementations), the engine's fake LLM, embedder
and vector store. ``make_engine`` returns a started :class:`EngineKit`; everything it
started is closed at the end of the test.

For tests that run on every real store: ``sql_url`` (SQLite, then the module's own PostgreSQL
database, ``pg_url``) with :func:`started_store`, and ``any_cache`` (in-process, then Redis
under a unique key prefix) with :func:`cache_entries` to look inside it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from config.settings import PACKAGED_PERSONAS
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from engine.ports import Cache
from storage.cache.memory import MemoryCache
from storage.cache.redis import RedisCache
from storage.sql import SQLConversationStore
from tests.conftest import fresh_postgres_database, require_redis
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory


@dataclass(slots=True)
class EngineKit:
    engine: Engine
    llm: FakeLLM
    store: SQLConversationStore
    cache: Cache
    vectors: InMemoryVectorMemory


MakeEngine = Callable[..., Awaitable[EngineKit]]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[MakeEngine]:
    numbers = itertools.count()
    async with AsyncExitStack() as stack:

        async def make(
            *, llm: FakeLLM | None = None, config: EngineConfig | None = None, cache: Cache | None = None
        ) -> EngineKit:
            store = SQLConversationStore(f"sqlite:///{tmp_path}/t{next(numbers)}.db")
            await store.start()
            stack.push_async_callback(store.aclose)
            cache = cache if cache is not None else MemoryCache()
            await cache.start()
            stack.push_async_callback(cache.aclose)
            vectors = InMemoryVectorMemory()
            embedder = FakeEmbedder()
            llm = llm if llm is not None else FakeLLM()
            personas = PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store)
            engine = Engine(
                llm=llm,
                store=store,
                cache=cache,
                personas=personas,
                recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.1, keywords=store),
                writer=MemoryWriter(store, vectors, embedder),
                config=config or EngineConfig(),
            )
            await engine.start()
            stack.push_async_callback(engine.aclose)
            return EngineKit(engine=engine, llm=llm, store=store, cache=cache, vectors=vectors)

        yield make


# --- every real store ----------------------------------------------------------------------


def _module_name(request: pytest.FixtureRequest) -> str:
    return request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")


@pytest.fixture(scope="module")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for the test module, dropped afterwards."""
    with fresh_postgres_database(f"we_test_{_module_name(request)}") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database file in ``tmp_path``, then the module's PostgreSQL database (``pg_url``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("pg_url"))


@contextlib.asynccontextmanager
async def started_store(url: str) -> AsyncIterator[SQLConversationStore]:
    """The SQL store on ``url``, started; closed at the end, a PostgreSQL database (shared by
    the module's tests) emptied first."""
    store = SQLConversationStore(url)
    await store.start()
    try:
        yield store
    finally:
        if store.kind == "postgresql":
            async with store.engine.begin() as conn:
                for table in ("messages", "memories", "settings", "users"):
                    await conn.execute(sa.text(f"DELETE FROM {table}"))
        await store.aclose()


@pytest.fixture(params=["memory", "redis"])
async def any_cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    """The in-process cache, then Redis under a key prefix of the test's own (emptied after)."""
    if request.param == "memory":
        memory = MemoryCache()
        await memory.start()
        yield memory
        await memory.aclose()
        return
    prefix = f"we-test-{_module_name(request)}-{uuid4().hex[:12]}:"
    redis_cache = RedisCache(require_redis(), prefix=prefix)
    await redis_cache.start()
    try:
        yield redis_cache
    finally:
        await redis_cache.delete_prefix("")
        await redis_cache.aclose()


async def cache_entries(cache: Cache) -> list[str]:
    """Every key and value in ``cache`` (a MemoryCache or a RedisCache): strings, list items,
    hash fields as ``field=value``; another kind of Redis value as ``<kind>``."""
    if isinstance(cache, MemoryCache):
        entries = cache._entries  # a test may look inside: the whole cache is this dict
        out = list(entries)
        for entry in entries.values():
            out.extend([entry.value] if isinstance(entry.value, str) else entry.value)
        return out
    assert isinstance(cache, RedisCache)
    client = aioredis.Redis.from_url(require_redis(), decode_responses=True)
    out = []
    try:
        async for key in client.scan_iter(match=f"{cache.prefix}*"):
            kind = await client.type(key)
            out.append(key.removeprefix(cache.prefix))  # the test's random prefix is no one's data
            if kind == "string":
                out.append(await client.get(key) or "")
            elif kind == "list":
                out.extend(await client.lrange(key, 0, -1))
            elif kind == "hash":
                out.extend(f"{k}={v}" for k, v in (await client.hgetall(key)).items())
            else:
                out.append(f"<{kind}>")
    finally:
        await client.aclose()
    return out
