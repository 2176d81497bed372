"""Memory care through the real engine (SQLite store, fake embedder and vectors): duplicates
reinforce, contradictions supersede, recall marks use, cleanup removes what is idle and unimportant."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path

import pytest

from engine.events import UniversalMessage, utcnow
from engine.memory_care import CarePolicy, MemoryState, contradicts, effective_importance, score_importance
from engine.pipeline import Engine
from tests.conftest import fresh_postgres_database, require_postgres
from tests.fakes.ports import FakeLLM
from tests.unit.conftest import engine_for

USER = "test:u1"


@pytest.fixture(params=["sqlite", "postgresql"])
def make_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., AbstractAsyncContextManager[Engine]]]:
    """The engine on SQLite, and on a fresh PostgreSQL database: care behaves the same on both."""
    if request.param == "sqlite":
        yield lambda llm=None: engine_for(tmp_path, llm or FakeLLM())
        return
    require_postgres()
    with fresh_postgres_database("we_test_care") as url:
        yield lambda llm=None: engine_for(tmp_path, llm or FakeLLM(), database_url=url)


def dm(text: str, **kw: object) -> UniversalMessage:
    return UniversalMessage(
        content=text,
        user_id="u1",
        user_name="Alice",
        platform="test",
        channel_id="dm-u1",
        is_direct=True,
        **kw,
    )


async def say(engine: Engine, *texts: str) -> None:
    for text in texts:
        await engine.handle(dm(text)).collect()
    await engine.writer.drain()


async def states(engine: Engine) -> dict[str, MemoryState]:
    return {s.id: s for s in await engine.store.memory_states(USER)}  # type: ignore[attr-defined]


async def test_the_same_fact_twice_is_one_stronger_memory_with_both_sources(make_engine) -> None:
    async with make_engine() as engine:
        await say(engine, "my dog is called Rex and he is three")
        [first] = await engine.store.list_memories(USER)
        await say(engine, "my dog is called Rex and he is three")
        [memory] = await engine.store.list_memories(USER)
        assert memory.id == first.id
        assert len(memory.source_message_ids) == 2
        assert memory.importance > first.importance
        [state] = (await states(engine)).values()
        assert state.mentions == 2
        hits = await engine.recall.recall(USER, "Alice: my dog is called Rex")
        assert [h.memory_id for h in hits][:1] == [memory.id]
        assert set(hits[0].source_message_ids) == set(memory.source_message_ids)


async def test_a_newer_statement_supersedes_the_older_which_stays_as_history(make_engine) -> None:
    async with make_engine() as engine:
        await say(engine, "I live in Berlin", "I really enjoy long walks by the sea")
        await say(engine, "I live in Lisbon")
        by_text = {m.text: m for m in await engine.store.list_memories(USER)}
        berlin, lisbon = by_text["Alice: I live in Berlin"], by_text["Alice: I live in Lisbon"]
        assert (await states(engine))[berlin.id].superseded_by == lisbon.id

        hits = await engine.recall.recall(USER, "Alice: where do I live? Berlin or Lisbon")
        ids = [h.memory_id for h in hits]
        assert lisbon.id in ids and berlin.id not in ids

        exported = {m["id"]: m for m in (await engine.export_user(USER))["memories"]}  # type: ignore[union-attr]
        assert exported[berlin.id]["superseded_by"] == lisbon.id
        assert exported[lisbon.id]["superseded_by"] is None


async def test_recall_marks_memories_used(make_engine) -> None:
    async with make_engine() as engine:
        await say(engine, "my cat is called Miso")
        [memory] = await engine.store.list_memories(USER)
        assert (await states(engine))[memory.id].use_count == 0
        await say(engine, "what is my cat Miso doing today?")
        state = (await states(engine))[memory.id]
        assert state.use_count == 1
        assert state.last_used_at is not None


async def test_cleanup_removes_old_unimportant_memories_only(make_engine) -> None:
    async with make_engine() as engine:
        await say(engine, "lol that was so funny haha", "I live in Porto with my cat Miso")
        await say(engine, "haha okay that joke again", "haha okay that joke again")  # said twice
        by_text = {m.text: m for m in await engine.store.list_memories(USER)}
        small_talk = by_text["Alice: lol that was so funny haha"]
        assert small_talk.importance < by_text["Alice: I live in Porto with my cat Miso"].importance
        assert engine.care is not None

        report = await engine.care.run_once(utcnow() + timedelta(days=30))  # not idle long enough
        assert report.deleted == 0
        report = await engine.care.run_once(utcnow() + timedelta(days=400))
        assert report.deleted == 1
        kept = {m.text for m in await engine.store.list_memories(USER)}
        assert kept == {"Alice: I live in Porto with my cat Miso", "Alice: haha okay that joke again"}
        assert await engine.store.keyword_search(USER, "funny", 5) == []
        hits = await engine.recall.recall(USER, "Alice: lol that was so funny haha")
        assert small_talk.id not in [h.memory_id for h in hits]


def test_rules() -> None:
    assert score_importance("my birthday is on 3 May") > score_importance("I went to the cinema")
    assert score_importance("I went to the cinema") > score_importance("hi there how are you")
    assert contradicts("Alice: I live in Berlin", "Alice: I live in Lisbon")
    assert not contradicts("Alice: I live in Berlin", "Alice: I live in Berlin now")
    assert contradicts("Alice: my favourite colour is green", "Alice: my favourite colour is blue!")
    assert contradicts("Alice: I work as a nurse", "Alice: I work as a teacher and love it")
    assert not contradicts("Alice: my dog is called Rex", "Alice: my cat is called Miso")
    now = utcnow()
    state = MemoryState(id="m", user_key=USER, importance=0.8, created_at=now, updated_at=now)
    half_life = CarePolicy().half_life_days
    assert effective_importance(state, now + timedelta(days=half_life), half_life) == 0.4
