"""The background memory jobs on the real stores: fact extraction and session compaction.

Each test runs on SQLite and on PostgreSQL (a database of its own, dropped afterwards), with
embedded Chroma and the real all-MiniLM-L6-v2 embedder. The LLM is the engine's fake, or the
real ``openai`` client (``inference/openai_chat.py``) against the local fake LLM server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from engine.compaction import SUMMARY_KIND, WATERMARK_PREFIX, CompactionPolicy, SessionCompactor
from engine.errors import LLMError
from engine.events import ChatMessage
from engine.fact_extraction import FactExtractor
from engine.memory import MemoryRecall, MemoryWriter, TurnRecord
from engine.memory_care import MemoryCare
from engine.memory_llm import BackgroundLLM, CallBudget
from engine.ports import MemoryRecord, Role, StoredMessage
from inference.minilm import MiniLMEmbedder
from inference.openai_chat import OpenAIChat
from storage.sql import SQLConversationStore
from storage.vector.chroma import ChromaVectorMemory
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.ports import FakeLLM
from tests.integration.conftest import started_store

NOW = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)
ALICE, BOB = "test:alice", "test:bob"
CONVERSATION = "test:c1"
SOURDOUGH = "busy weekend: a long walk with the dog, groceries, and I bake sourdough bread every Sunday"


@dataclass(slots=True)
class Kit:
    store: SQLConversationStore
    vectors: ChromaVectorMemory
    embedder: MiniLMEmbedder
    writer: MemoryWriter


@pytest.fixture
async def kit(sql_url: str, tmp_path: Path) -> AsyncIterator[Kit]:
    async with started_store(sql_url) as store:
        vectors = ChromaVectorMemory.embedded(tmp_path / "chroma", collection_prefix=f"j{uuid4().hex[:8]}")
        await vectors.start()
        embedder = MiniLMEmbedder()
        await embedder.start()
        try:
            yield Kit(store, vectors, embedder, MemoryWriter(store, vectors, embedder))
        finally:
            await embedder.aclose()
            await vectors.aclose()


def turn(
    id: str,
    content: str,
    at: datetime,
    *,
    user: str = ALICE,
    role: Role = "user",
    conversation: str = CONVERSATION,
) -> StoredMessage:
    name = {ALICE: "Alice", BOB: "Bob"}.get(user, user.rsplit(":", maxsplit=1)[-1].title())
    return StoredMessage(
        id=id,
        conversation_key=conversation,
        user_key=user,
        role=role,
        content=content,
        platform="test",
        channel_id=conversation.rsplit(":", maxsplit=1)[-1],
        created_at=at,
        user_name=name if role == "user" else "Ember",
    )


async def said(kit: Kit, *messages: StoredMessage) -> None:
    """As the engine does it: each message stored, then remembered by the writer."""
    for m in messages:
        await kit.store.add_message(m)
    await kit.writer.write([TurnRecord(m, None) for m in messages if m.role == "user"])


def facts_reply(facts_by_phrase: dict[str, list[str]]) -> Any:
    """An extraction answer: the facts listed for the first phrase found in the prompt."""

    def reply(messages: Sequence[Any]) -> str:
        prompt = messages[-1]["content"] if isinstance(messages[-1], dict) else messages[-1].content
        for phrase, facts in facts_by_phrase.items():
            if phrase in prompt:
                return json.dumps({"facts": [{"fact": f, "from": [1]} for f in facts]})
        return '{"facts": []}'

    return reply


# --- fact extraction ------------------------------------------------------------------------


async def test_extracted_facts_carry_provenance_merge_and_supersede(kit: Kit) -> None:
    llm = FakeLLM(
        facts_reply(
            {
                "St Mary": ["I work as a nurse"],
                "nights mostly": ["I work as a nurse"],
                "primary school": ["I work as a teacher"],
            }
        )
    )
    extractor = FactExtractor(kit.writer, BackgroundLLM(llm, CallBudget(10)))
    kit.writer.observers.append(extractor.observe)
    t = NOW - timedelta(days=1)

    await said(kit, turn("m1", "ugh, long week. I work as a nurse at St Mary's and the shifts are brutal", t))
    assert (await extractor.run_pending()).facts == 1
    [nurse] = [m for m in await kit.store.list_memories(ALICE) if m.kind == "fact"]
    assert nurse.text == "Alice: I work as a nurse"
    assert (nurse.source_message_ids, nurse.platform, nurse.channel_id) == (("m1",), "test", "c1")
    assert nurse.created_at == t
    [embedding] = await kit.embedder.embed([nurse.text])
    hit = next(h for h in await kit.vectors.query(ALICE, embedding, 5) if h.id == nurse.id)
    assert (hit.metadata["kind"], hit.metadata["sources"]) == ("fact", "m1")

    # said again: the same fact is reinforced, not copied, and credits both messages
    await said(kit, turn("m2", "as I told you, nursing is my life: I work as a nurse, nights mostly", t))
    await extractor.run_pending()
    assert [m.id for m in await kit.store.list_memories(ALICE) if m.kind == "fact"] == [nurse.id]
    [state] = await kit.store.memory_states(ALICE, [nurse.id])
    assert (state.source_message_ids, state.mentions) == (("m1", "m2"), 2)

    # a new job: the extracted fact supersedes the old one (its message alone would not)
    later = t + timedelta(hours=5)
    await said(
        kit, turn("m3", "big news: I quit the hospital and started at a primary school, the kids", later)
    )
    await extractor.run_pending()
    facts = {m.text: m for m in await kit.store.list_memories(ALICE) if m.kind == "fact"}
    teacher = facts["Alice: I work as a teacher"]
    assert teacher.source_message_ids == ("m3",)
    [state] = await kit.store.memory_states(ALICE, [nurse.id])
    assert state.superseded_by == teacher.id

    recall = MemoryRecall(kit.vectors, kit.embedder, top_k=5, min_similarity=0.0, keywords=kit.store)
    ids = [h.memory_id for h in await recall.recall(ALICE, "Alice: what do I work as?")]
    assert teacher.id in ids and nurse.id not in ids
    # the message memories stay as they were
    assert sum(m.kind == "message" for m in await kit.store.list_memories(ALICE)) == 3


async def test_extraction_through_the_openai_client_and_its_fallbacks(kit: Kit) -> None:
    reply = facts_reply({"sourdough": ["I bake sourdough bread every Sunday"], "garbled": []})

    def answer(messages: list[dict[str, Any]]) -> str:
        if "garbled" in messages[-1]["content"]:
            return "Sure thing! Alice bakes {{ broken"
        return str(reply(messages))

    async with FakeLLMServer(reply=answer) as server:
        chat = OpenAIChat(
            base_url=server.openai_base_url, api_key="test-key", model="fake-model", timeout_s=5.0
        )
        await chat.start()
        try:
            memory_llm = BackgroundLLM(chat, CallBudget(10), max_tokens=120, timeout_s=5.0)
            extractor = FactExtractor(kit.writer, memory_llm, batch_turns=4)
            kit.writer.observers.append(extractor.observe)

            await said(kit, turn("m1", SOURDOUGH, NOW))
            report = await extractor.run_pending()
            assert (report.calls, report.facts, report.fallbacks) == (1, 1, 0)
            request = server.requests[-1]
            assert request.path == "/v1/chat/completions"
            assert (request.json["temperature"], request.json["max_tokens"]) == (0.1, 120)
            assert request.messages[0]["role"] == "system"
            assert request.messages[1]["content"].endswith(f"1. {SOURDOUGH}")

            await said(kit, turn("m2", "this one comes back garbled from the model somehow", NOW))
            server.fail_next(1, status=500)
            await said(kit, turn("m3", "this one is garbled too, or meets a server error", NOW, user=BOB))
            report = await extractor.run_pending()
            assert (report.calls, report.facts, report.fallbacks) == (2, 0, 2)
        finally:
            await chat.aclose()
    [fact] = [m for m in await kit.store.list_memories(ALICE) if m.kind == "fact"]
    assert (fact.text, fact.source_message_ids) == ("Alice: I bake sourdough bread every Sunday", ("m1",))
    assert [m.kind for m in await kit.store.list_memories(BOB)] == ["message"]


# --- compaction -----------------------------------------------------------------------------


def sessions_of_alice_and_bob() -> dict[str, list[StoredMessage]]:
    """Three old sessions (two of Alice's, one of Bob's in the same channel) and a recent one."""
    old = NOW - timedelta(days=3)
    return {
        "alice-1": [
            turn("a1", "I adopted a beagle puppy called Biscuit last weekend.", old),
            turn("a2", "A beagle! How is Biscuit settling in?", old + timedelta(minutes=1), role="assistant"),
            turn(
                "a3",
                "lol he chewed my shoes. My sister Nora is visiting in June.",
                old + timedelta(minutes=40),
            ),
        ],
        "alice-2": [
            turn("a4", "I'm flying to Lisbon for a conference on Friday.", old + timedelta(hours=3)),
            turn("a5", "Safe travels!", old + timedelta(hours=3, minutes=1), role="assistant"),
        ],
        "bob-1": [turn("b1", "My favourite band is Radiohead, they are playing in May.", old, user=BOB)],
        "bob-2": [turn("b2", "hey", old + timedelta(hours=5), user=BOB)],  # nothing to summarise
        "alice-recent": [turn("a6", "I started learning the piano this week.", NOW - timedelta(hours=1))],
    }


async def stored(kit: Kit, sessions: dict[str, list[StoredMessage]]) -> None:
    for session in sessions.values():
        for m in session:
            await kit.store.add_message(m)


async def summaries(kit: Kit, user_key: str) -> list[MemoryRecord]:
    return sorted(
        (m for m in await kit.store.list_memories(user_key, limit=1000) if m.kind == SUMMARY_KIND),
        key=lambda m: m.created_at,
    )


async def test_old_sessions_become_one_summary_each_compacted_once(kit: Kit) -> None:
    sessions = sessions_of_alice_and_bob()
    await stored(kit, sessions)
    compactor = SessionCompactor(kit.store, kit.vectors, kit.embedder)

    assert await compactor.run_once(NOW) == 4  # three summarised, Bob's "hey" passed over

    first, second = await summaries(kit, ALICE)
    assert first.source_message_ids == ("a1", "a2", "a3")
    assert second.source_message_ids == ("a4", "a5")
    assert first.created_at == sessions["alice-1"][0].created_at
    assert first.text.startswith("Alice: [conversation 2024-06-07 12:00-12:40 UTC] ")
    assert "I adopted a beagle puppy called Biscuit last weekend." in first.text
    assert "Nora" in first.text
    assert "How is Biscuit settling in" not in first.text  # the assistant's words are not the user's
    assert (first.platform, first.channel_id) == ("test", "c1")
    [bob] = await summaries(kit, BOB)
    assert bob.source_message_ids == ("b1",)
    bob_mark = await kit.store.get_setting(BOB, WATERMARK_PREFIX + CONVERSATION)
    assert bob_mark == sessions["bob-2"][0].created_at.isoformat()  # passed over, not summarised
    [embedding] = await kit.embedder.embed([first.text])
    hit = next(h for h in await kit.vectors.query(ALICE, embedding, 3) if h.id == first.id)
    assert hit.metadata["kind"] == SUMMARY_KIND
    assert hit.metadata["sources"] == "a1,a2,a3"
    assert hit.metadata["session_end"] == sessions["alice-1"][-1].created_at.isoformat()

    watermark = await kit.store.get_setting(ALICE, WATERMARK_PREFIX + CONVERSATION)
    assert watermark == sessions["alice-2"][-1].created_at.isoformat()

    # the watermark keeps the same turns from being compacted again
    assert await compactor.run_once(NOW) == 0
    assert await compactor.run_once(NOW + timedelta(minutes=5)) == 0
    assert len(await summaries(kit, ALICE)) == 2

    # a turn that arrives late, in a new old session, is compacted alone
    late = turn("a7", "I finally booked my driving test for July.", NOW - timedelta(days=2, hours=12))
    await kit.store.add_message(late)
    assert await SessionCompactor(kit.store, kit.vectors, kit.embedder).run_once(NOW) == 1
    assert [s.source_message_ids for s in await summaries(kit, ALICE)] == [
        ("a1", "a2", "a3"),
        ("a4", "a5"),
        ("a7",),
    ]

    # two days on, the recent session is old too
    assert await compactor.run_once(NOW + timedelta(days=2)) == 1
    assert (await summaries(kit, ALICE))[-1].source_message_ids == ("a6",)

    # messages are kept; forgetting the user erases the watermark with the rest
    assert len(await kit.store.user_messages(ALICE)) == 7
    await kit.store.forget_user(ALICE)
    assert await kit.store.get_setting(ALICE, WATERMARK_PREFIX + CONVERSATION) is None
    assert await kit.store.get_setting(BOB, WATERMARK_PREFIX + CONVERSATION) is not None


async def test_compaction_is_bounded_per_run_and_walks_on(kit: Kit) -> None:
    old = NOW - timedelta(days=5)
    expected: set[tuple[str, ...]] = set()
    for u in range(5):
        user = f"test:user{u}"
        for s in range(2):
            start = old + timedelta(hours=3 * s)
            ids = (f"u{u}s{s}a", f"u{u}s{s}b")
            expected.add(ids)
            await kit.store.add_message(turn(ids[0], f"I like hiking trail number {u}{s}.", start, user=user))
            await kit.store.add_message(
                turn(ids[1], "Nice!", start + timedelta(minutes=2), user=user, role="assistant")
            )
    compactor = SessionCompactor(
        kit.store, kit.vectors, kit.embedder, policy=CompactionPolicy(max_sessions=3)
    )

    assert [await compactor.run_once(NOW) for _ in range(5)] == [3, 3, 3, 1, 0]

    written = [s for u in range(5) for s in await summaries(kit, f"test:user{u}")]
    assert {s.source_message_ids for s in written} == expected
    assert len(written) == len(expected)


async def test_summaries_come_from_the_llm_when_it_answers(kit: Kit) -> None:
    await stored(kit, sessions_of_alice_and_bob())

    def summarise(messages: Sequence[ChatMessage]) -> str:
        transcript = messages[-1].content
        if "Lisbon" in transcript:
            lisbon_prompts.append(transcript)
            return ""  # an empty answer: the extractive summary is used
        return "Summary: I got a beagle puppy, Biscuit, and my sister Nora visits in June."

    lisbon_prompts: list[str] = []
    llm = FakeLLM(summarise)
    compactor = SessionCompactor(
        kit.store, kit.vectors, kit.embedder, llm=BackgroundLLM(llm, CallBudget(10), max_tokens=80)
    )
    care = MemoryCare(kit.store, kit.vectors, compactor=compactor)

    report = await care.run_once(NOW)

    assert report.sessions_compacted == 4
    first, second = await summaries(kit, ALICE)
    assert first.text == (
        "Alice: [conversation 2024-06-07 12:00-12:40 UTC] "
        "I got a beagle puppy, Biscuit, and my sister Nora visits in June."
    )
    assert second.text.endswith("] I'm flying to Lisbon for a conference on Friday.")
    assert compactor.llm_summaries == 2  # Alice's first session and Bob's
    assert len(lisbon_prompts) == 1
    transcript = llm.prompts[0][1].content
    assert "Alice: I adopted a beagle puppy called Biscuit last weekend." in transcript
    assert "Ember: A beagle! How is Biscuit settling in?" in transcript


async def test_a_down_llm_leaves_extractive_summaries_within_the_bound(kit: Kit) -> None:
    long_session = [
        turn(f"x{i}", sentence, NOW - timedelta(days=4, minutes=-i))
        for i, sentence in enumerate(
            [
                "hi there how are you today?",
                "My brother Tom lives in Canada and works as an engineer.",
                "lol ok.",
                "I am allergic to peanuts, which makes eating out hard.",
                "whatever, the weather is grey again and the bus was late and nothing much happened at all.",
            ]
        )
    ]
    for m in long_session:
        await kit.store.add_message(m)
    llm = BackgroundLLM(FakeLLM(fail_with=LLMError("model unavailable")), CallBudget(10))
    compactor = SessionCompactor(
        kit.store, kit.vectors, kit.embedder, llm=llm, policy=CompactionPolicy(summary_max_chars=120)
    )

    assert await compactor.run_once(NOW) == 1

    [summary] = await summaries(kit, ALICE)
    body = summary.text.split("] ", 1)[1]
    assert len(body) <= 120
    assert body == (
        "My brother Tom lives in Canada and works as an engineer. "
        "I am allergic to peanuts, which makes eating out hard."
    )
    assert summary.source_message_ids == tuple(m.id for m in long_session)
    assert (llm.calls, llm.failures, compactor.llm_summaries) == (1, 1, 0)


# --- the composition root -------------------------------------------------------------------


@pytest.mark.parametrize("use_llm", [True, False])
async def test_build_app_wires_both_jobs_from_the_settings(tmp_path: Path, use_llm: bool) -> None:
    """MEMORY_USE_LLM=auto with the OpenAI backend: on; off: rule-based only."""
    from bot.app import build_app
    from config.settings import Settings
    from engine.events import UniversalMessage

    def answer(messages: list[dict[str, Any]]) -> str:
        if messages[0]["content"].startswith("You pick out lasting personal facts"):
            return '{"facts": [{"fact": "I keep bees on my roof", "from": [1]}]}'
        return "How lovely!"

    async with FakeLLMServer(reply=answer) as server:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            llm_backend="openai",
            openai_base_url=server.openai_base_url,
            openai_api_key="test",
            llm_max_retries=0,
            data_dir=tmp_path,
            web_enabled=False,
            memory_use_llm="auto" if use_llm else "off",
            memory_extraction_batch_turns=3,
            memory_compaction_max_sessions=7,
            memory_session_gap_minutes=30,
        )
        async with build_app(settings) as app:
            engine = app.engine
            assert engine.care is not None
            compactor = engine.care.compactor
            assert isinstance(compactor, SessionCompactor)
            assert (compactor.policy.max_sessions, compactor.policy.session_gap_s) == (7, 1800.0)
            extractors = [getattr(observe, "__self__", None) for observe in engine.writer.observers]
            assert [type(e) for e in extractors] == ([FactExtractor] if use_llm else [])

            text = "my news: a neighbour taught me and now I keep bees on my roof, two hives"
            message = UniversalMessage(
                content=text, user_id="1", user_name="Alice", platform="test", channel_id="c", is_direct=True
            )
            await engine.handle(message).collect()
            await engine.writer.drain()
            if use_llm:
                extractor = extractors[0]
                assert isinstance(extractor, FactExtractor) and extractor.batch_turns == 3
                assert (await extractor.run_pending()).facts == 1
            report = await engine.care.run_once(datetime.now(UTC) + timedelta(days=3))
            assert report.sessions_compacted == 1
            kinds = sorted(m.kind for m in await app.store.list_memories("test:1"))
    assert kinds == (["fact", "message", SUMMARY_KIND] if use_llm else ["message", SUMMARY_KIND])
