"""Contradiction through the real write path, on the phrasing corpus (``tests/data/phrasings.toml``).

The real ``MemoryWriter`` with a real SQLite store, embedded Chroma and the real all-MiniLM-L6-v2
embedder: a user states a fact, then says one of the corpus's phrasings. Only a change of fact
supersedes the fact; nothing else weakens it (superseded, importance down, or counted as saying
it again); a question is not made a memory. With an LLM for memory work, its "yes" is needed
too: "no", a failure or a timeout leaves the fact be.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import pytest_asyncio

from engine.errors import LLMError
from engine.events import ChatMessage
from engine.memory import MemoryWriter, TurnRecord, memory_text
from engine.memory_care import CONFIRM_SYSTEM
from engine.memory_llm import BackgroundLLM, CallBudget
from engine.ports import MemoryRecord, MemoryState, StoredMessage
from inference.minilm import MiniLMEmbedder
from storage.sql import SQLConversationStore
from storage.vector.chroma import ChromaVectorMemory
from tests.fakes.ports import FakeLLM
from tests.unit.test_statements import CHANGES

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
_users = itertools.count()


@dataclass(slots=True)
class Kit:
    store: SQLConversationStore
    vectors: ChromaVectorMemory
    embedder: MiniLMEmbedder

    def writer(self, llm: FakeLLM | None = None, *, timeout_s: float = 5.0) -> MemoryWriter:
        memory_llm = BackgroundLLM(llm, CallBudget(1000), timeout_s=timeout_s) if llm is not None else None
        return MemoryWriter(self.store, self.vectors, self.embedder, llm=memory_llm)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kit(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Kit]:
    path: Path = tmp_path_factory.mktemp("contradictions")
    store = SQLConversationStore(f"sqlite:///{path}/store.db")
    vectors = ChromaVectorMemory.embedded(path / "chroma", collection_prefix=f"c{uuid4().hex[:8]}")
    embedder = MiniLMEmbedder()
    for resource in (store, vectors, embedder):
        await resource.start()
    yield Kit(store, vectors, embedder)
    for resource in (embedder, vectors, store):
        await resource.aclose()


def said(user_key: str, number: int, content: str, *, name: str = "Alice") -> TurnRecord:
    message = StoredMessage(
        id=f"{user_key}:m{number}",
        conversation_key=f"{user_key}:c",
        user_key=user_key,
        role="user",
        content=content,
        platform="test",
        channel_id="c",
        created_at=T0 + timedelta(minutes=number),
        user_name=name,
    )
    return TurnRecord(user_message=message, reply=None)


async def memories(kit: Kit, user_key: str) -> tuple[dict[str, MemoryRecord], dict[str, MemoryState]]:
    records = {m.text: m for m in await kit.store.list_memories(user_key)}
    states = {s.id: s for s in await kit.store.memory_states(user_key)}
    return records, states


async def state_after(
    kit: Kit, writer: MemoryWriter, *texts: str | Sequence[str], name: str = "Alice"
) -> tuple[str, dict[str, MemoryRecord], dict[str, MemoryState]]:
    """A new user says ``texts`` in order (a sequence: one batch); their memories after."""
    user_key = f"test:u{next(_users)}"
    numbers = itertools.count()
    for text in texts:
        batch = [text] if isinstance(text, str) else list(text)
        await writer.write([said(user_key, next(numbers), t, name=name) for t in batch])
    return (user_key, *await memories(kit, user_key))


def _case(stored: str, then: dict[str, Any]) -> Any:
    marks = [pytest.mark.xfail(reason=then["rules_miss"], strict=True)] if "rules_miss" in then else []
    return pytest.param(stored, then, marks=marks, id=then["text"])


@pytest.mark.parametrize(("stored", "then"), [_case(s, t) for s, t in CHANGES])
async def test_only_a_change_of_fact_supersedes_the_fact(kit: Kit, stored: str, then: dict[str, Any]) -> None:
    writer = kit.writer()
    _, before, _ = await state_after(kit, writer, stored)
    [fact_before] = before.values()
    _, records, states = await state_after(kit, writer, stored, then["text"])
    fact = records[memory_text("Alice", stored)]
    newer = records.get(memory_text("Alice", then["text"]))
    if then.get("supersedes", False):
        assert newer is not None
        assert states[fact.id].superseded_by == newer.id
        return
    assert states[fact.id].superseded_by is None
    assert fact.importance >= fact_before.importance
    if then["kind"] == "question":
        assert newer is None, "a question is not made a memory"
    elif then["kind"] != "fact":
        assert newer is not None, "said otherwise than as a fact, it is its own memory"
        assert states[fact.id].mentions == 1


async def test_a_negation_is_no_restatement(kit: Kit) -> None:
    # MiniLM puts the two at cosine 0.976, above the duplicate threshold
    _, records, states = await state_after(
        kit, kit.writer(), "my dog is called Biscuit", "my dog isn't called Biscuit"
    )
    fact, negation = records["Alice: my dog is called Biscuit"], records["Alice: my dog isn't called Biscuit"]
    assert states[fact.id].mentions == 1 and states[fact.id].superseded_by is None
    assert negation.importance <= fact.importance


async def test_one_speaker_never_supersedes_another_in_the_same_scope(kit: Kit) -> None:
    writer = kit.writer()
    user_key = f"test:u{next(_users)}"
    await writer.write([said(user_key, 0, "I live in Berlin", name="Caroline")])
    await writer.write([said(user_key, 1, "I live in Lisbon", name="Melanie")])
    _, states = await memories(kit, user_key)
    assert all(state.superseded_by is None for state in states.values())


async def test_a_change_in_the_same_batch_supersedes(kit: Kit) -> None:
    # the two are only 0.66 close as wholes: the writer commits the first before checking the second
    one_batch = ["I work at Google.", "i work at a small bakery now"]
    _, records, states = await state_after(kit, kit.writer(), one_batch)
    google, bakery = records["Alice: I work at Google."], records["Alice: i work at a small bakery now"]
    assert states[google.id].superseded_by == bakery.id


def confirming(answer: str) -> FakeLLM:
    def reply(messages: Sequence[ChatMessage]) -> str:
        assert messages[0].content == CONFIRM_SYSTEM
        return answer

    return FakeLLM(reply)


async def test_with_an_llm_its_yes_is_needed(kit: Kit) -> None:
    for answer, superseded in (("Yes.", True), ("no", False), ("Hard to say.", False)):
        llm = confirming(answer)
        writer = kit.writer(llm)
        _, records, states = await state_after(kit, writer, "I live in Berlin.", "i live in lisbon now")
        berlin, lisbon = records["Alice: I live in Berlin."], records["Alice: i live in lisbon now"]
        assert states[berlin.id].superseded_by == (lisbon.id if superseded else None), answer
        [prompt] = llm.prompts
        assert '"I live in Berlin."' in prompt[1].content and '"i live in lisbon now"' in prompt[1].content


async def test_an_llm_that_fails_or_hangs_leaves_the_fact_be(kit: Kit) -> None:
    failing = FakeLLM(fail_with=LLMError("model unavailable"))
    hanging = FakeLLM("yes", chunk_delay_s=10.0)
    for llm, timeout_s in ((failing, 5.0), (hanging, 0.2)):
        writer = kit.writer(llm, timeout_s=timeout_s)
        _, records, states = await asyncio.wait_for(
            state_after(kit, writer, "My favourite colour is green.", "my favourite colour is blue now"), 30
        )
        green = records["Alice: My favourite colour is green."]
        assert states[green.id].superseded_by is None
        assert "Alice: my favourite colour is blue now" in records  # stored all the same
        assert len(llm.prompts) == 1


async def test_an_llm_never_sees_what_is_not_a_change_of_fact(kit: Kit) -> None:
    """An LLM that would say yes to anything: the rules keep every non-fact from it."""
    llm = confirming("yes")
    writer = kit.writer(llm)
    not_facts = [(stored, then) for stored, then in CHANGES if then["kind"] != "fact"]
    for stored, then in not_facts:
        _, records, states = await state_after(kit, writer, stored, then["text"])
        assert states[records[memory_text("Alice", stored)].id].superseded_by is None, then["text"]
    assert len(not_facts) >= 50
    assert llm.prompts == []
