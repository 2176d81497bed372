"""``ReasoningFilter``: a reasoning model's ``<think>`` blocks are never shown, however the
stream is cut into chunks."""

from __future__ import annotations

import random

import pytest

from engine.events import ChatMessage
from engine.reasoning import ReasoningFilter
from tests.fakes.ports import FakeLLM

CASES = [
    ("<think>The user greets me. I should greet back.</think>\n\nHello! How are you?", "Hello! How are you?"),
    ("<THINKING>step one, step two</THINKING>Sure, here it is.", "Sure, here it is."),
    ("No thinking at all, just 3 < 4 and a <b>tag</b>.", "No thinking at all, just 3 < 4 and a <b>tag</b>."),
    ("Before. <think>hidden</think> After.", "Before.  After."),
    ("<think>one</think>A<think>two</think>B", "AB"),
    ("<think>cut off while thinking, never closed", ""),
    ("Ends with a lone <", "Ends with a lone <"),
    ("Ends with <thi", "Ends with <thi"),
]


@pytest.mark.parametrize(("stream", "shown"), CASES)
def test_thinking_is_dropped_at_any_chunking(stream: str, shown: str) -> None:
    rng = random.Random(len(stream))
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, rng.randint(1, 12))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        reasoning = ReasoningFilter()
        out = "".join(reasoning.feed(chunk) for chunk in chunks) + reasoning.end()
        assert out == shown, chunks
    whole = ReasoningFilter()
    assert whole.feed(stream) + whole.end() == shown


def test_it_says_while_the_model_thinks_and_counts_what_it_hid() -> None:
    reasoning = ReasoningFilter()
    assert reasoning.feed("<think>let me") == ""
    assert reasoning.thinking
    assert reasoning.feed(" see</think>Yes.") == "Yes."
    assert not reasoning.thinking
    assert reasoning.hidden_chars == len("let me see")


async def test_the_engine_never_posts_or_stores_the_thinking(make_engine) -> None:
    from engine.events import UniversalMessage

    llm = FakeLLM("<think>The user asks about their cat. Keep it short.</think>Miso sounds lovely!")
    async with make_engine(llm) as engine:
        message = UniversalMessage(
            content="my cat is called Miso",
            user_id="u1",
            user_name="Ana",
            platform="test",
            channel_id="dm-u1",
        )
        stream = engine.handle(message)
        chunks = [chunk async for chunk in stream]
        assert "".join(chunks) == "Miso sounds lovely!"
        assert stream.response.content == "Miso sounds lovely!"
        await engine.writer.drain()
        stored = await engine.store.recent_messages(message.conversation_key, 10)
        assert [m.content for m in stored] == ["my cat is called Miso", "Miso sounds lovely!"]
        await engine.handle(
            UniversalMessage(
                content="and what now?", user_id="u1", user_name="Ana", platform="test", channel_id="dm-u1"
            )
        ).collect()
        history: list[ChatMessage] = llm.prompts[-1]
        assert all("Keep it short" not in m.content for m in history)
        memories = await engine.store.list_memories("test:u1", limit=100)
        assert all("Keep it short" not in m.text for m in memories)
