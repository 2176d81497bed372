"""Prompt assembly: the persona always whole and first, then the turns, then what changes from one
message to the next; the oldest turns dropped first, memories within their share; the compact shape."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.events import ChatMessage, MemoryHit, Turn
from engine.persona import Persona
from engine.ports import UserProfile
from engine.prompt import (
    COMPACT_LENGTH_RULE,
    LONG_REPLY_NOTE,
    HistoryWindows,
    Prompt,
    PromptBudget,
    PromptStyle,
    build_prompt,
    estimate_tokens,
)

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
    assert [m.role for m in prompt.messages] == ["system", *["user", "assistant"] * 3, "system", "user"]
    assert prompt.messages[0].content == PERSONA.system_text()
    context = prompt.messages[-2].content
    assert "memory 0" in context and "memory 1" in context and "You are talking with Ann." in context


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
    kept = [m.content for m in prompt.messages[1:-2]]
    assert [m.role for m in prompt.messages[1:-2]] == [t.role for t in history[-prompt.turns_included :]]
    user_turns = [t.content for t in history[-prompt.turns_included :] if t.role == "user"]
    assert [m.content for m in prompt.messages[1:-2] if m.role == "user"] == user_turns
    assert len(kept) == prompt.turns_included
    assert f"{prompt.turns_dropped} earlier messages" in prompt.messages[-2].content
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
    assert prompt.messages[0] == ChatMessage("system", PERSONA.system_text())
    assert prompt.messages[-1].role == "user" and prompt.messages[-1].content
    assert prompt.turns_included + prompt.turns_dropped == n_turns
    total_estimate = sum(estimate_tokens(m.content) + 4 for m in prompt.messages)
    assert total_estimate <= budget.input_tokens


# --- a prefix that stays the same from one message to the next ------------------------------

EXAMPLES = (("I ran a marathon!", "Congratulations! How do you feel?"),)
TALKER = Persona(
    name="t",
    system_prompt="You are Tess, a calm companion. You listen well and remember what people say.",
    style="plain",
    examples=EXAMPLES,
)


def converse(style: PromptStyle, exchanges: int, reply_size: int = 60) -> list[Prompt]:
    """Prompts of one conversation, each built as the engine does (``HistoryWindows``)."""
    windows = HistoryWindows()
    history: list[Turn] = []
    prompts = []
    for i in range(exchanges):
        message = f"message {i}: " + "words " * 8
        prompt = build_prompt(
            persona=TALKER,
            user_message=message,
            user_name="Ann",
            turns=history[-20:],  # the engine's recent turns: a window that moves
            memories=[memory(i % 3)],
            profile=None,
            budget=PromptBudget(total_tokens=2048, reply_tokens=256),
            emotion=["joy", "sadness", "neutral"][i % 3],
            style=style,
            history_from=windows.get("c"),
        )
        windows.put("c", prompt.first_turn)
        prompts.append(prompt)
        history += [
            Turn("user", message, "Ann", NOW + timedelta(minutes=2 * i)),
            Turn("assistant", f"reply {i} " + "z" * reply_size, "Tess", NOW + timedelta(minutes=2 * i + 1)),
        ]
    return prompts


@pytest.mark.parametrize("style", ["compact", "full"])
def test_each_prompt_starts_with_the_previous_ones_persona_and_turns(style: PromptStyle) -> None:
    prompts = converse(style, 30)
    kept_start = 0
    for before, after in itertools.pairwise(prompts):
        if after.first_turn != before.first_turn:
            continue  # the shown history jumped forward
        kept_start += 1
        # Everything but the context, the message and the latest reply (shortened once it is older)
        stable = before.messages[:-3]
        assert after.messages[: len(stable)] == stable
    # the history's start moves in jumps, not at every message
    assert kept_start >= 20


@pytest.mark.parametrize("style", ["compact", "full"])
def test_what_changes_per_message_comes_after_the_turns(style: PromptStyle) -> None:
    prompts = converse(style, 6)
    assert len({p.messages[0] for p in prompts}) == 1  # the persona, for any message
    for prompt in prompts:
        assert "memory" not in prompt.messages[0].content
        assert "Ann" not in prompt.messages[0].content
        assert prompt.messages[-2].role == "system" and "Ann" in prompt.messages[-2].content
        assert "memory" in prompt.messages[-2].content
    assert "sounds like joy" in prompts[3].messages[-2].content or style == "compact"


def test_the_bots_older_replies_are_shortened_before_anything_the_user_said() -> None:
    history = [
        Turn("user", "I moved to Porto last week " + "u" * 300, "Ann", NOW),
        Turn("assistant", "That is exciting. " + "b" * 2000, "Tess", NOW + timedelta(minutes=1)),
        Turn("user", "The flat is small " + "v" * 300, "Ann", NOW + timedelta(minutes=2)),
        Turn("assistant", "Small can be cosy. " + "c" * 400, "Tess", NOW + timedelta(minutes=3)),
    ]
    prompt = build_prompt(
        persona=TALKER,
        user_message="What should I buy first?",
        user_name="Ann",
        turns=history,
        memories=[],
        profile=None,
        budget=PromptBudget(total_tokens=4096),
    )
    shown = prompt.messages[1:-2]
    assert [m.content for m in shown if m.role == "user"] == [history[0].content, history[2].content]
    old_reply, latest_reply = (m.content for m in shown if m.role == "assistant")
    assert old_reply.startswith("That is exciting.") and estimate_tokens(old_reply) <= 160
    assert latest_reply == history[3].content  # the one the user is answering: whole


def test_a_small_model_gets_a_short_prompt_with_facts_as_a_short_list() -> None:
    facts = [
        MemoryHit(memory_id=f"f{i}", text=f"Ann: fact number {i} about me", score=0.9, created_at=NOW)
        for i in range(8)
    ]
    profile = UserProfile(
        user_key="test:1",
        platform="test",
        user_id="1",
        display_name="Ann",
        first_seen=NOW,
        last_seen=NOW,
        message_count=40,
    )
    prompt = build_prompt(
        persona=TALKER,
        user_message="hello",
        user_name="Ann",
        turns=turns(30, size=40),
        memories=facts,
        profile=profile,
        budget=PromptBudget(),
        emotion="joy",
        style="compact",
    )
    system = prompt.messages[0].content
    assert system == f"You are Tess, a calm companion. {COMPACT_LENGTH_RULE}"
    assert prompt.messages[1:3] == (
        ChatMessage("user", EXAMPLES[0][0]),
        ChatMessage("assistant", EXAMPLES[0][1]),
    )
    context = prompt.messages[-2].content
    assert context.splitlines()[0] == "You are talking with Ann."
    lines = [line for line in context.splitlines() if line.startswith("- ")]
    assert lines == [f"- fact number {i} about me" for i in range(4)]
    assert "messages since" not in context and "joy" not in context and "not shown" not in context
    assert prompt.turns_included <= 10
    assert sum(estimate_tokens(m.content) + 4 for m in prompt.messages) < 600


def test_a_persona_can_say_who_it_is_in_a_sentence_for_small_models() -> None:
    persona = Persona(name="p", system_prompt="Long text. More.", short_prompt="  You are Pip,\n a robot. ")
    assert persona.compact_text() == "You are Pip, a robot."
    assert Persona(name="q", system_prompt="You are Q! Really.").compact_text() == "You are Q!"


def test_a_message_that_asks_for_more_is_told_it_may_get_a_longer_answer() -> None:
    args = dict(persona=TALKER, user_message="tell me a story", user_name="Ann", turns=[], memories=[])
    long = build_prompt(**args, profile=None, budget=PromptBudget(), style="compact", long_reply=True)
    usual = build_prompt(**args, profile=None, budget=PromptBudget(), style="compact")
    assert LONG_REPLY_NOTE in long.messages[-2].content
    assert LONG_REPLY_NOTE not in usual.messages[-2].content
    assert long.messages[:-2] == usual.messages[:-2]


def test_stop_sequences_name_every_speaker_of_the_recent_turns() -> None:
    history = [
        Turn("user", "hi", "Bo", NOW),
        Turn("assistant", "hey", "Tess", NOW),
        Turn("user", "yo", "Cy", NOW),
    ]
    prompt = build_prompt(
        persona=TALKER,
        user_message="hello all",
        user_name="Ann",
        turns=history,
        memories=[],
        profile=None,
        budget=PromptBudget(),
        group_chat=True,
    )
    assert set(prompt.stop) == {"\nUser:", "\nuser:", "\nAnn:", "\nBo:", "\nCy:"}


def test_history_windows_forget_the_least_recently_used_conversations() -> None:
    windows = HistoryWindows(size=2)
    first, second = turns(2)
    windows.put("a", first)
    windows.put("b", second)
    assert windows.get("a") == first  # "a" is now the most recent
    windows.put("c", second)
    assert windows.get("b") is None and windows.get("a") == first and windows.get("c") == second
    windows.put("a", None)
    assert windows.get("a") is None


@given(
    n_turns=st.integers(0, 60),
    turn_size=st.integers(0, 600),
    message_size=st.integers(1, 6000),
    total=st.integers(600, 6000),
    start=st.integers(0, 60),
    style=st.sampled_from(["compact", "full"]),
)
def test_the_budget_holds_in_both_styles_wherever_the_history_started(
    n_turns: int, turn_size: int, message_size: int, total: int, start: int, style: PromptStyle
) -> None:
    budget = PromptBudget(total_tokens=total, reply_tokens=200)
    history = turns(n_turns, turn_size)
    prompt = build_prompt(
        persona=TALKER,
        user_message="m" * message_size,
        user_name="Ann",
        turns=history,
        memories=[memory(i) for i in range(10)],
        profile=None,
        budget=budget,
        emotion="joy",
        style=style,
        history_from=history[start] if start < n_turns else None,
    )
    assert prompt.turns_included + prompt.turns_dropped == n_turns
    assert sum(estimate_tokens(m.content) + 4 for m in prompt.messages) <= budget.input_tokens


def test_a_memory_that_is_one_of_the_turns_shown_is_not_repeated() -> None:
    said = Turn("user", "My dog is called Biscuit.", "Ann", NOW)
    history = [said, Turn("assistant", "What a lovely name!", "Tess", NOW + timedelta(minutes=1))]
    same = MemoryHit(memory_id="same", text="Ann: My dog is called Biscuit.", score=0.9, created_at=NOW)
    older = MemoryHit(memory_id="older", text="Ann: I live in Porto.", score=0.8, created_at=NOW)
    for style in ("compact", "full"):
        prompt = build_prompt(
            persona=TALKER,
            user_message="What is my dog called?",
            user_name="Ann",
            turns=history,
            memories=[same, older],
            profile=None,
            budget=PromptBudget(),
            style=style,  # type: ignore[arg-type]
        )
        assert [hit.memory_id for hit in prompt.memories_included] == ["same", "older"]  # both reach it
        assert "Biscuit" not in prompt.messages[-2].content and "Porto" in prompt.messages[-2].content
