"""Fact extraction: the prompt, reading the LLM's answer, fallbacks and the bounds on calls.

The store is the real SQLite one and the writer the real ``MemoryWriter``; the LLM, embedder
and vector store are the engine's fakes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.errors import BackendUnavailable
from engine.events import ChatMessage
from engine.fact_extraction import (
    FACT_IMPORTANCE,
    ExtractedFact,
    FactExtractor,
    extraction_prompt,
    parse_facts,
)
from engine.memory import MemoryWriter, TurnRecord
from engine.memory_llm import BackgroundLLM, CallBudget
from engine.ports import StoredMessage
from storage.sql import SQLConversationStore
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def message(
    i: int, content: str, *, user: str = "u1", name: str = "Alice", minutes: float | None = None
) -> StoredMessage:
    return StoredMessage(
        id=f"m{i}",
        conversation_key="test:c1",
        user_key=f"test:{user}",
        role="user",
        content=content,
        platform="test",
        channel_id="c1",
        created_at=T0 + timedelta(minutes=i if minutes is None else minutes),
        user_name=name,
    )


class RecordingLLM(FakeLLM):
    """The fake LLM, also keeping the ``max_tokens`` and ``temperature`` of every call."""

    def __init__(self, reply: object, **kw: object) -> None:
        super().__init__(reply, **kw)  # type: ignore[arg-type]
        self.settings: list[tuple[int, float]] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.settings.append((max_tokens, temperature))
        async for chunk in super().stream(messages, max_tokens=max_tokens, temperature=temperature):
            yield chunk


def answer(*facts: tuple[str, list[int]]) -> str:
    return json.dumps({"facts": [{"fact": text, "from": refs} for text, refs in facts]})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLConversationStore]:
    sql = SQLConversationStore(f"sqlite:///{tmp_path / 'facts.db'}")
    await sql.start()
    yield sql
    await sql.aclose()


async def written(writer: MemoryWriter, store: SQLConversationStore, *messages: StoredMessage) -> None:
    """The way the engine does it: the message is stored, then the writer remembers it."""
    for m in messages:
        await store.add_message(m)
    await writer.write([TurnRecord(m, None) for m in messages])


# --- reading the answer -------------------------------------------------------------------


def test_parse_reads_the_asked_for_json() -> None:
    facts = parse_facts(answer(("I work as a nurse", [2]), ("My dog is called Rex", [1, 3])), 3)
    assert facts == [ExtractedFact("I work as a nurse", (1,)), ExtractedFact("My dog is called Rex", (0, 2))]
    assert parse_facts('{"facts": []}', 3) == []


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        # a code fence and words around it
        (
            'Sure! Here they are:\n```json\n{"facts": [{"fact": "I live in Porto", "from": [1]}]}\n```',
            [("I live in Porto", (0,))],
        ),
        # a bare list of strings: credited to every message
        (
            '["I play the cello", "I am allergic to cats"]',
            [("I play the cello", (0, 1)), ("I am allergic to cats", (0, 1))],
        ),
        # other key names, numbers as strings, one out of range, the user's name in front
        (
            '{"facts": [{"text": "Alice: I have two sisters", "turns": ["2", 9]}]}',
            [("I have two sisters", (1,))],
        ),
        # duplicates kept once, junk items skipped, an empty fact dropped
        (
            '{"facts": ["I run marathons", "i run marathons", 42, {"fact": null}, ""]}',
            [("I run marathons", (0, 1))],
        ),
        # a bullet in front is not part of the fact, a number that starts it is
        (
            '["- I own 3 cats", "3 cats live with me"]',
            [("I own 3 cats", (0, 1)), ("3 cats live with me", (0, 1))],
        ),
        ("None.", []),
    ],
)
def test_parse_is_lenient_about_what_models_write(
    output: str, expected: list[tuple[str, tuple[int, ...]]]
) -> None:
    facts = parse_facts(output, 2, "Alice")
    assert facts is not None
    assert [(f.text, f.turns) for f in facts] == expected


@pytest.mark.parametrize(
    "output",
    [
        "Alice works as a nurse and has a dog.",  # prose, no JSON
        '{"facts": [{"fact": "I work as a nu',  # cut off mid-answer (max tokens)
        '{"summary": "a nurse"}',  # JSON, but not the asked-for shape
        '{"facts": "I work as a nurse"}',
        "",
    ],
)
def test_unreadable_answers_are_none(output: str) -> None:
    assert parse_facts(output, 2) is None


def test_the_prompt_is_short_numbered_and_asks_for_json() -> None:
    batch = [message(1, "I work as a nurse"), message(2, "x" * 2000)]
    system, user = extraction_prompt("Alice", batch)
    assert system.role == "system" and '{"facts": [' in system.content
    assert user.content.splitlines() == ["Messages from Alice:", "1. I work as a nurse", f"2. {'x' * 500}…"]


# --- the extractor ------------------------------------------------------------------------


async def test_facts_are_written_with_provenance_and_importance(store: SQLConversationStore) -> None:
    llm = RecordingLLM(
        answer(("I work as a nurse at the city hospital", [1]), ("My dog is called Rex", [2, 3]))
    )
    writer = MemoryWriter(store, InMemoryVectorMemory(), FakeEmbedder())
    extractor = FactExtractor(writer, BackgroundLLM(llm, CallBudget(10), max_tokens=150), batch_turns=8)
    writer.observers.append(extractor.observe)
    batch = [
        message(1, "long day, I work as a nurse at the city hospital and the night shift was rough"),
        message(2, "my dog is called Rex, he is a terrier who barks at everything"),
        message(3, "Rex also steals socks whenever he gets the chance"),
        message(4, "ok"),  # not worth remembering: never sent to the LLM
    ]
    await written(writer, store, *batch)
    assert extractor.pending == 3

    report = await extractor.run_pending()

    assert (report.calls, report.facts, report.fallbacks) == (1, 2, 0)
    assert llm.settings == [(150, 0.1)]
    facts = {m.text: m for m in await store.list_memories("test:u1") if m.kind == "fact"}
    nurse = facts["Alice: I work as a nurse at the city hospital"]
    assert nurse.source_message_ids == ("m1",)
    assert (nurse.platform, nurse.channel_id, nurse.created_at) == ("test", "c1", batch[0].created_at)
    assert nurse.importance >= FACT_IMPORTANCE
    rex = facts["Alice: My dog is called Rex"]
    assert rex.source_message_ids == ("m2", "m3")
    assert rex.created_at == batch[2].created_at
    # the message memories are all still there
    kinds = [m.kind for m in await store.list_memories("test:u1")]
    assert kinds.count("message") == 3


@pytest.mark.parametrize(
    "llm",
    [
        FakeLLM("Alice is a nurse, I think."),  # prose
        FakeLLM('{"facts": [{"fact": "I am a nu'),  # cut off
        FakeLLM(fail_with=BackendUnavailable("LLM", "connection refused")),  # down
        FakeLLM(answer(("I work as a nurse", [1])), chunk_delay_s=5.0),  # too slow
    ],
    ids=["prose", "cut-off", "down", "timeout"],
)
async def test_a_failed_or_unreadable_call_falls_back_to_the_message_memories(
    store: SQLConversationStore, llm: FakeLLM
) -> None:
    writer = MemoryWriter(store, InMemoryVectorMemory(), FakeEmbedder())
    extractor = FactExtractor(writer, BackgroundLLM(llm, CallBudget(10), timeout_s=0.2))
    writer.observers.append(extractor.observe)
    await written(writer, store, message(1, "I work as a nurse at the city hospital"))

    report = await extractor.run_pending()

    assert (report.calls, report.facts, report.fallbacks) == (1, 0, 1)
    [memory] = await store.list_memories("test:u1")
    assert (memory.kind, memory.text) == ("message", "Alice: I work as a nurse at the city hospital")
    assert extractor.pending == 0  # not retried


async def test_batches_hold_one_users_messages_and_at_most_batch_turns(store: SQLConversationStore) -> None:
    llm = FakeLLM('{"facts": []}')
    writer = MemoryWriter(store, InMemoryVectorMemory(), FakeEmbedder())
    extractor = FactExtractor(writer, BackgroundLLM(llm, CallBudget(100)), batch_turns=4)
    writer.observers.append(extractor.observe)
    messages = [
        message(
            i,
            f"message number {i} from {'Alice' if i % 3 else 'Bob'} here",
            user="u1" if i % 3 else "u2",
            name="Alice" if i % 3 else "Bob",
        )
        for i in range(1, 16)
    ]
    await written(writer, store, *messages)

    report = await extractor.run_pending()

    alice, bob = (
        [m for m in messages if m.user_key == "test:u1"],
        [m for m in messages if m.user_key == "test:u2"],
    )
    assert report.calls == len(llm.prompts) == -(-len(alice) // 4) + -(-len(bob) // 4)
    sent: list[str] = []
    for prompt in llm.prompts:
        lines = prompt[1].content.splitlines()
        assert 2 <= len(lines) <= 5  # the header and 1-4 messages
        assert len({line.split(" from ")[-1] for line in lines[1:]}) == 1  # one speaker per call
        sent += [line.split(". ", 1)[1] for line in lines[1:]]
    assert sorted(sent) == sorted(m.content for m in messages)  # each message sent once


async def test_calls_per_minute_are_bounded(store: SQLConversationStore) -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    budget = CallBudget(2, clock=lambda: now[0], sleep=sleep)
    started: list[float] = []

    def reply(prompt: Sequence[ChatMessage]) -> str:
        started.append(now[0])
        return '{"facts": []}'

    writer = MemoryWriter(store, InMemoryVectorMemory(), FakeEmbedder())
    extractor = FactExtractor(writer, BackgroundLLM(FakeLLM(reply), budget), batch_turns=1)
    writer.observers.append(extractor.observe)
    await written(writer, store, *(message(i, f"this is message number {i}") for i in range(5)))

    report = await extractor.run_pending()

    assert report.calls == 5
    assert started == [0.0, 0.0, 60.0, 60.0, 120.0]
    for t in started:
        assert sum(1 for s in started if t <= s < t + 60) <= 2
    assert sum(slept) == 120.0


async def test_pending_messages_are_bounded_oldest_dropped_first(store: SQLConversationStore) -> None:
    writer = MemoryWriter(store, InMemoryVectorMemory(), FakeEmbedder())
    extractor = FactExtractor(writer, BackgroundLLM(FakeLLM(), CallBudget(1)), max_pending=3)
    extractor.observe([message(i, f"this is message number {i}") for i in range(5)])
    assert (extractor.pending, extractor.dropped) == (3, 2)
    assert [m.id for m in extractor.next_batch()] == ["m2", "m3", "m4"]


async def test_the_background_task_extracts_what_the_writer_observed(store: SQLConversationStore) -> None:
    llm = FakeLLM(answer(("I grow tomatoes on my balcony", [1])))
    writer = MemoryWriter(store, InMemoryVectorMemory(), FakeEmbedder())
    extractor = FactExtractor(writer, BackgroundLLM(llm, CallBudget(10)), linger_s=0.0)
    writer.observers.append(extractor.observe)
    await writer.start()
    await extractor.start()
    try:
        m = message(1, "I grow tomatoes on my balcony every summer, it's my favourite hobby")
        await store.add_message(m)
        await writer.submit(TurnRecord(m, None))
        await writer.drain()
        for _ in range(200):
            if extractor.facts:
                break
            await asyncio.sleep(0.01)
        assert extractor.facts == 1
    finally:
        await extractor.aclose()
        await writer.aclose()
    [fact] = [m for m in await store.list_memories("test:u1") if m.kind == "fact"]
    assert fact.text == "Alice: I grow tomatoes on my balcony"


async def test_a_fact_never_supersedes_the_message_it_was_drawn_from(store: SQLConversationStore) -> None:
    llm = FakeLLM(answer(("My favourite colour is blue", [1])))
    writer = MemoryWriter(store, InMemoryVectorMemory(), FakeEmbedder())
    extractor = FactExtractor(writer, BackgroundLLM(llm, CallBudget(10)))
    writer.observers.append(extractor.observe)
    await written(
        writer,
        store,
        message(1, "my favourite colour is green, well actually my favourite colour is blue now"),
    )

    assert (await extractor.run_pending()).facts == 1

    by_kind = {m.kind: m for m in await store.list_memories("test:u1")}
    assert by_kind["fact"].text == "Alice: My favourite colour is blue"
    assert all(state.superseded_by is None for state in await store.memory_states("test:u1"))


def test_auto_leaves_an_in_process_llama_cpp_to_the_replies() -> None:
    from bot.app import make_memory_llm
    from config.settings import Settings

    def settings(use: str) -> Settings:
        return Settings(_env_file=None, memory_use_llm=use)  # type: ignore[call-arg]

    llm = FakeLLM()
    assert make_memory_llm(settings("auto"), llm, "llamacpp") is None
    assert make_memory_llm(settings("off"), llm, "openai") is None
    assert make_memory_llm(settings("on"), llm, "llamacpp") is not None
    made = make_memory_llm(settings("auto"), llm, "openai")
    assert made is not None and made.budget.calls_per_minute == 6
