"""Prompt assembly: the persona always whole, the oldest turns dropped first, memories within their share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from engine.events import MemoryHit, Turn
from engine.persona import Persona
from engine.prompt import PromptBudget, build_prompt, estimate_tokens

PERSONA = Persona(name="p", system_prompt="You are a kind test persona. " * 5, style="brief")
NOW = datetime(2026, 1, 2, tzinfo=UTC)


def turns(n: int, size: int = 40) -> list[Turn]:
    return [
        Turn(
            "user" if i % 2 == 0 else "assistant",
            f"turn {i} " + "x" * size,
            "Ann",
            NOW + timedelta(minutes=i),
        )
        for i in range(n)
    ]


def memory(i: int, size: int = 30) -> MemoryHit:
    return MemoryHit(memory_id=f"m{i}", text=f"memory {i} " + "y" * size, score=1 - i / 100, created_at=NOW)


def test_everything_fits_when_the_budget_is_large() -> None:
    prompt = build_prompt(
        persona=PERSONA,
        user_message="hello",
        user_name="Ann",
        turns=turns(6),
        memories=[memory(0), memory(1)],
        profile=None,
        budget=PromptBudget(total_tokens=8000),
    )
    assert prompt.turns_included == 6 and prompt.turns_dropped == 0
    assert [m.role for m in prompt.messages] == ["system", *["user", "assistant"] * 3, "user"]
    assert PERSONA.system_prompt.strip() in prompt.messages[0].content
    assert "memory 0" in prompt.messages[0].content and "memory 1" in prompt.messages[0].content


def test_oldest_turns_go_first_and_the_model_is_told() -> None:
    history = turns(60, size=200)
    prompt = build_prompt(
        persona=PERSONA,
        user_message="latest",
        user_name="Ann",
        turns=history,
        memories=[],
        profile=None,
        budget=PromptBudget(total_tokens=1200, reply_tokens=200),
    )
    assert 0 < prompt.turns_included < 60
    assert prompt.turns_dropped == 60 - prompt.turns_included
    kept = [m.content for m in prompt.messages[1:-1]]
    assert kept == [t.content for t in history[-prompt.turns_included :]]
    assert f"{prompt.turns_dropped} earlier messages" in prompt.messages[0].content
    assert prompt.messages[-1].content == "latest"


def test_memories_take_at_most_their_share_best_first() -> None:
    hits = [memory(i, size=200) for i in range(50)]
    budget = PromptBudget(total_tokens=1500, reply_tokens=200, memory_share=0.25)
    prompt = build_prompt(
        persona=PERSONA,
        user_message="hi",
        user_name="Ann",
        turns=[],
        memories=hits,
        profile=None,
        budget=budget,
    )
    assert 0 < len(prompt.memories_included) < 50
    assert [h.memory_id for h in prompt.memories_included] == [
        f"m{i}" for i in range(len(prompt.memories_included))
    ]
    memory_tokens = sum(estimate_tokens(h.text) for h in prompt.memories_included)
    assert memory_tokens <= budget.input_tokens * budget.memory_share


@given(
    n_turns=st.integers(0, 80),
    turn_size=st.integers(0, 600),
    message_size=st.integers(1, 20_000),
    total=st.integers(600, 6000),
)
def test_the_persona_is_never_dropped_and_the_budget_holds(
    n_turns: int, turn_size: int, message_size: int, total: int
) -> None:
    budget = PromptBudget(total_tokens=total, reply_tokens=200)
    prompt = build_prompt(
        persona=PERSONA,
        user_message="m" * message_size,
        user_name="Ann",
        turns=turns(n_turns, turn_size),
        memories=[memory(i) for i in range(10)],
        profile=None,
        budget=budget,
    )
    assert prompt.messages[0].role == "system"
    assert PERSONA.system_prompt.strip() in prompt.messages[0].content
    assert prompt.messages[-1].role == "user" and prompt.messages[-1].content
    assert prompt.turns_included + prompt.turns_dropped == n_turns
    total_estimate = sum(estimate_tokens(m.content) + 4 for m in prompt.messages)
    assert total_estimate <= budget.input_tokens
