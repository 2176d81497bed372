"""Fixtures for integration tests: a real ``Engine`` wired the way the composition root wires it.

SQLite store and in-process cache (real implementations), the engine's fake LLM, embedder
and vector store. ``make_engine`` returns a started :class:`EngineKit`; everything it
started is closed at the end of the test.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import PACKAGED_PERSONAS
from engine.fakes import FakeEmbedder, FakeLLM, InMemoryVectorMemory
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from engine.ports import Cache
from storage.cache.memory import MemoryCache
from storage.sql import SQLConversationStore


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
