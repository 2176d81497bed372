"""Session compaction's rules: sessions, extractive and LLM summaries, the time span, the call budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.compaction import (
    clean_summary,
    extractive_summary,
    session_span,
    split_sessions,
    summary_id,
    summary_prompt,
)
from engine.memory_llm import CallBudget
from engine.ports import Role, StoredMessage

T0 = datetime(2024, 6, 7, 22, 30, tzinfo=UTC)


def turn(i: int, content: str, minutes: float, role: Role = "user") -> StoredMessage:
    return StoredMessage(
        id=f"m{i}",
        conversation_key="test:c1",
        user_key="test:alice",
        role=role,
        content=content,
        platform="test",
        channel_id="c1",
        created_at=T0 + timedelta(minutes=minutes),
        user_name="Alice" if role == "user" else "Ember",
    )


def test_a_silence_longer_than_the_gap_starts_a_new_session() -> None:
    turns = [turn(1, "a", 0), turn(2, "b", 60), turn(3, "c", 120.5), turn(4, "d", 125), turn(5, "e", 400)]
    sessions = split_sessions(turns, gap_s=3600)
    assert [[m.id for m in s] for s in sessions] == [["m1", "m2"], ["m3", "m4"], ["m5"]]
    assert split_sessions([], gap_s=3600) == []


def test_extractive_summary_keeps_the_important_sentences_in_order_within_the_bound() -> None:
    session = [
        turn(1, "hey how are you? lol.", 0),
        turn(2, "The weather was grey all day and the bus came late again.", 1),
        turn(3, "Great to hear that! Tell me more about your sister.", 2, role="assistant"),
        turn(4, "My sister Nora moves to Oslo in March. I work as a nurse on nights.", 3),
    ]
    summary = extractive_summary(session, max_chars=80)
    assert summary == "My sister Nora moves to Oslo in March. I work as a nurse on nights."
    roomy = extractive_summary(session, max_chars=500)
    assert roomy == (
        "The weather was grey all day and the bus came late again. "
        "My sister Nora moves to Oslo in March. I work as a nurse on nights."
    )
    assert "hey" not in roomy and "Tell me more" not in roomy  # small talk and the assistant left out


def test_extractive_summary_edge_cases() -> None:
    assert extractive_summary([turn(1, "Glad to help!", 0, role="assistant")], 100) == ""
    assert extractive_summary([turn(1, "ok lol", 0)], 100) == "ok lol"  # small talk when nothing else
    long = "My grandmother grew up on a farm near the coast where " + "she kept goats and " * 20 + "bees."
    shortened = extractive_summary([turn(1, long, 0)], 60)
    assert len(shortened) <= 60 and shortened.endswith("…")
    assert shortened.startswith("My grandmother grew up on a farm")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Summary: I adopted a beagle.", "I adopted a beagle."),
        ('"Alice: I adopted a beagle."', "I adopted a beagle."),
        ("```\nI adopted\n a beagle.\n```", "I adopted a beagle."),
        ("   ", None),
        ("I " + "really " * 30 + "like dogs.", "I " + "really " * 5 + "really…"),
    ],
)
def test_llm_summaries_are_cleaned_and_bounded(answer: str, expected: str | None) -> None:
    assert clean_summary(answer, "Alice", 50) == expected


def test_summary_prompt_holds_the_transcript_and_the_bound() -> None:
    session = [turn(1, "I adopted a beagle.", 0), turn(2, "Lovely!", 1, role="assistant")]
    system, user = summary_prompt("Alice", session, 300)
    assert "300 characters" in system.content and "first person" in system.content
    assert user.content == "Alice: I adopted a beagle.\nEmber: Lovely!"


def test_session_span_and_summary_ids() -> None:
    assert session_span(T0, T0 + timedelta(minutes=40)) == "2024-06-07 22:30-23:10 UTC"
    assert session_span(T0, T0 + timedelta(hours=2)) == "2024-06-07 22:30-2024-06-08 00:30 UTC"
    assert summary_id("u", "c", "m1") == summary_id("u", "c", "m1") != summary_id("u", "c", "m2")


async def test_call_budget_waits_for_the_oldest_call_to_age_out() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    budget = CallBudget(3, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await budget.acquire()
    assert slept == [] and not budget.available()
    now[0] += 20.0
    await budget.acquire()  # the first call was at 100: free at 160
    assert slept == [40.0] and now[0] == 160.0
    with pytest.raises(ValueError, match="at least 1"):
        CallBudget(0)
