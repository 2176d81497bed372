"""An engine wired to a real SQLite store and in-process cache, with fake LLM/embedder/vectors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from config.settings import PACKAGED_PERSONAS
from engine.memory import MemoryRecall, MemoryWriter
from engine.memory_care import MemoryCare
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from storage.cache.memory import MemoryCache
from storage.sql import SQLConversationStore
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory


@asynccontextmanager
async def engine_for(
    tmp_path: Path, llm: FakeLLM, config: EngineConfig | None = None, *, database_url: str | None = None
) -> AsyncIterator[Engine]:
    """``database_url``: the store's database (default: a new SQLite file under ``tmp_path``)."""
    store = SQLConversationStore(database_url or f"sqlite:///{tmp_path / 'engine.db'}")
    cache = MemoryCache()
    vectors = InMemoryVectorMemory()
    embedder = FakeEmbedder()
    await store.start()
    await cache.start()
    library = PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember")
    engine = Engine(
        llm=llm,
        store=store,
        cache=cache,
        personas=PersonaSelector(library, store),
        recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.2, keywords=store),
        writer=MemoryWriter(store, vectors, embedder, queue_size=8),
        config=config or EngineConfig(),
        bot_name="Ember",
        care=MemoryCare(store, vectors),
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()
        await cache.aclose()
        await store.aclose()


@pytest.fixture
def make_engine(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Engine]]:
    def factory(
        llm: FakeLLM | None = None, config: EngineConfig | None = None
    ) -> AbstractAsyncContextManager[Engine]:
        return engine_for(tmp_path, llm or FakeLLM(), config)

    return factory
