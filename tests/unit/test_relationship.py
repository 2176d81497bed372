"""The relationship profile: stages, emotional trend, "call me X", the prompt, and the tracker
on the real engine (SQLite store, in-process cache)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.settings import PACKAGED_PERSONAS
from engine.errors import InputError
from engine.events import UniversalMessage
from engine.persona import PersonaLibrary
from engine.ports import UserProfile
from engine.prompt import PromptBudget, build_prompt
from engine.relationship import (
    RELATIONSHIP_SETTING,
    RelationshipProfile,
    clean_preferred_name,
    describe,
    detect_preferred_name,
    emotion_trend,
    familiarity_stage,
)
from tests.fakes.ports import FakeLLM

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("interactions", "days", "stage"),
    [
        (0, 0, "new"),
        (4, 100, "new"),
        (5, 0, "acquainted"),
        (24, 30, "acquainted"),
        (25, 2.9, "acquainted"),  # many messages in one sitting are not familiarity yet
        (25, 3, "familiar"),
        (99, 100, "familiar"),
        (100, 13.9, "familiar"),
        (100, 14, "close"),
        (5000, 365, "close"),
    ],
)
def test_stage_thresholds(interactions: int, days: float, stage: str) -> None:
    assert familiarity_stage(interactions, days) == stage


def test_profile_stage_counts_days_from_first_seen() -> None:
    rel = RelationshipProfile("t:1", interactions=30, first_seen=NOW - timedelta(days=4))
    assert rel.days_known(NOW) == pytest.approx(4.0)
    assert rel.stage(NOW) == "familiar"
    assert rel.stage(NOW - timedelta(days=2)) == "acquainted"
    assert RelationshipProfile("t:1").stage(NOW) == "new"


def test_trend_needs_a_few_messages() -> None:
    trend = emotion_trend(["joy", "joy"])
    assert trend.summary is None
    assert trend.dominant == "joy"
    assert trend.counts == {"joy": 2}


def test_trend_mostly_one_feeling() -> None:
    trend = emotion_trend(["joy", "neutral", "joy", "joy", "surprise", "joy"])
    assert trend.dominant == "joy"
    assert trend.counts == {"joy": 4, "neutral": 1, "surprise": 1}
    assert trend.summary == "mostly cheerful lately"


def test_trend_sadder_than_usual() -> None:
    earlier = ["joy", "neutral", "joy", "neutral", "joy", "neutral"]
    trend = emotion_trend([*earlier, "sadness", "sadness", "neutral", "sadness", "sadness"])
    assert trend.summary == "sadder than usual"


def test_trend_always_sad_is_not_sadder_than_usual() -> None:
    trend = emotion_trend(["sadness"] * 10)
    assert trend.summary == "mostly sad lately"


def test_trend_neutral_or_mixed() -> None:
    assert emotion_trend(["neutral"] * 8).summary is None
    assert emotion_trend(["joy", "anger", "fear", "neutral", "sadness"]).summary == "mixed feelings lately"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("call me Sam", "Sam"),
        ("Please call me Sam.", "Sam"),
        ("Hi! You can call me Mary Jane and stuff", "Mary Jane"),
        ("my friends call me jo", "Jo"),  # an all-lowercase message: the name is capitalised
        ("Just call me O'Neil, everyone does", "O'Neil"),
        ("don't call me late", None),
        ("Don't call me Shirley", None),
        ("please do not call me Bob", None),
        ("never call me Sam again", None),
        ("call me back when you can", None),
        ("Call me later!", None),
        ("could you call me tomorrow?", None),
        ("call me maybe", None),
        ("Call me crazy, but I like rain", None),
        ("I will call my mother", None),
        ("", None),
    ],
)
def test_call_me_detection(text: str, name: str | None) -> None:
    assert detect_preferred_name(text) == name


def test_clean_preferred_name() -> None:
    assert clean_preferred_name("  Sam   Smith ") == "Sam Smith"
    with pytest.raises(InputError):
        clean_preferred_name("   ")
    with pytest.raises(InputError):
        clean_preferred_name("x" * 41)


def test_json_round_trip() -> None:
    rel = RelationshipProfile(
        "t:1",
        interactions=7,
        first_seen=NOW - timedelta(days=1),
        last_seen=NOW,
        recent_emotions=("joy", "joy", "joy"),
        preferred_name="Sam",
        updated_at=NOW,
    )
    data = rel.to_json(NOW)
    assert data["stage"] == "acquainted"
    assert data["trend"] == "mostly cheerful lately"
    assert data["dominant_emotion"] == "joy"
    assert RelationshipProfile.from_json("t:1", data) == rel
    assert RelationshipProfile.from_json("t:1", None) == RelationshipProfile("t:1")
    assert RelationshipProfile.from_json("t:1", {"recent_emotions": "junk"}).recent_emotions == ()


def _profile(count: int, days: float, preferred: str | None = None) -> UserProfile:
    return UserProfile(
        user_key="test:u1",
        platform="test",
        user_id="u1",
        display_name="Alice",
        first_seen=datetime.now(UTC) - timedelta(days=days),
        last_seen=datetime.now(UTC),
        message_count=count,
        preferred_name=preferred,
    )


def _system(profile: UserProfile | None, rel: RelationshipProfile | None) -> str:
    persona = PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember").default
    prompt = build_prompt(
        persona=persona,
        user_message="hi",
        user_name="Alice",
        turns=[],
        memories=[],
        profile=profile,
        budget=PromptBudget(),
        relationship=rel,
    )
    return prompt.system_text


def test_prompt_mentions_name_stage_and_trend() -> None:
    profile = _profile(30, 5, preferred="Ally")
    rel = RelationshipProfile("test:u1", recent_emotions=("sadness",) * 4).with_profile(profile)
    system = _system(profile, rel)
    assert "You are talking with Alice, who likes to be called Ally." in system
    assert "You know each other fairly well by now." in system
    assert "They have seemed mostly sad lately." in system


def test_prompt_describe_sentences() -> None:
    new = RelationshipProfile("t:1", interactions=1, first_seen=NOW)
    assert describe(new, NOW) == "You have only just met them."
    earlier = ("joy", "neutral", "joy", "joy")
    sadder = RelationshipProfile(
        "t:1",
        interactions=200,
        first_seen=NOW - timedelta(days=60),
        recent_emotions=(*earlier, "sadness", "sadness", "sadness", "fear", "sadness"),
    )
    assert describe(sadder, NOW) == (
        "You are close: you have talked often, over a long time. Lately they seem sadder than usual."
    )


def test_prompt_without_relationship_is_unchanged() -> None:
    system = _system(None, None)
    assert "You are talking with Alice." in system
    assert "just met" not in system


def dm(text: str, user: str = "u1", name: str = "Alice") -> UniversalMessage:
    return UniversalMessage(
        content=text, user_id=user, user_name=name, platform="test", channel_id=f"dm-{user}", is_direct=True
    )


async def test_engine_tracks_the_relationship_after_the_reply(make_engine) -> None:
    llm = FakeLLM("ok")
    async with make_engine(llm) as engine:
        for text in ("I am so happy today", "what a wonderful day", "I love it, yay"):
            await engine.handle(dm(text)).collect()
        await engine.relationships.drain()
        stored = await engine.store.get_setting("test:u1", RELATIONSHIP_SETTING)
        assert stored["interactions"] == 3
        assert stored["recent_emotions"] == ["joy", "joy", "joy"]
        assert stored["trend"] == "mostly cheerful lately"
        assert stored["stage"] == "new"
        # the next prompt knows the trend
        await engine.handle(dm("tell me something")).collect()
        assert "They have seemed mostly cheerful lately." in llm.prompts[-1][-2].content


async def test_call_me_sets_the_preferred_name_for_the_next_reply(make_engine) -> None:
    llm = FakeLLM("ok")
    async with make_engine(llm) as engine:
        await engine.handle(dm("hello, please call me Ally")).collect()
        await engine.relationships.drain()
        profile = await engine.store.get_user("test:u1")
        assert profile is not None and profile.preferred_name == "Ally"
        await engine.handle(dm("don't call me late tonight")).collect()
        await engine.relationships.drain()
        assert (await engine.store.get_user("test:u1")).preferred_name == "Ally"  # type: ignore[union-attr]
        assert "who likes to be called Ally" in llm.prompts[-1][-2].content
        # the other user is untouched
        await engine.handle(dm("hi", user="u2", name="Bob")).collect()
        assert "You are talking with Bob." in llm.prompts[-1][-2].content


async def test_set_preferred_name_directly(make_engine) -> None:
    async with make_engine(FakeLLM("ok")) as engine:
        assert await engine.relationships.set_preferred_name("test:u1", "Sam") is False  # unknown user
        await engine.handle(dm("hello")).collect()
        assert await engine.relationships.set_preferred_name("test:u1", "  Sam ") is True
        assert (await engine.store.get_user("test:u1")).preferred_name == "Sam"  # type: ignore[union-attr]
        assert await engine.relationships.set_preferred_name("test:u1", None) is True
        assert (await engine.store.get_user("test:u1")).preferred_name is None  # type: ignore[union-attr]


async def test_export_and_forget_cover_the_relationship(make_engine) -> None:
    async with make_engine(FakeLLM("ok")) as engine:
        await engine.handle(dm("I am so happy, call me Ally")).collect()
        exported = await engine.export_user("test:u1")
        assert exported["relationship"]["preferred_name"] == "Ally"  # type: ignore[index]
        assert exported["relationship"]["interactions"] == 1  # type: ignore[index]
        assert exported["settings"][RELATIONSHIP_SETTING]["recent_emotions"] == ["joy"]  # type: ignore[index]
        await engine.forget_user("test:u1")
        assert await engine.store.get_setting("test:u1", RELATIONSHIP_SETTING) is None
        assert (await engine.relationships.get("test:u1")).recent_emotions == ()
        exported = await engine.export_user("test:u1")
        assert exported["relationship"] is None
        assert exported["settings"] == {}
