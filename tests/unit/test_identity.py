"""The pure parts of account linking: code format and how two relationships combine."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.identity import (
    CODE_ALPHABET,
    LinkCode,
    LinkResult,
    generate_code,
    link_instructions,
    linked_message,
    merge_relationships,
    normalize_code,
)
from engine.relationship import RECENT_EMOTIONS, RelationshipProfile


def test_codes_use_only_unambiguous_characters() -> None:
    codes = [generate_code() for _ in range(200)]
    assert all(len(c) == 8 and set(c) <= set(CODE_ALPHABET) for c in codes)
    assert not set("".join(codes)) & set("0O1IL")
    assert len(set(codes)) == 200


def test_codes_are_read_forgivingly_but_never_guessed_at() -> None:
    assert normalize_code(" abcd-2345 ") == "ABCD2345"
    assert normalize_code("ABCD 2345") == "ABCD2345"
    assert normalize_code("ABCD0345") is None  # 0 is never in a code
    assert normalize_code("ABC2345") is None
    assert normalize_code("ABCD23456") is None
    assert normalize_code("") is None


def test_instructions_say_where_to_enter_the_code_and_when_it_expires() -> None:
    issued = LinkCode("ABCD2345", "discord:1", datetime(2026, 1, 1, 12, 30, tzinfo=UTC), 600.0)
    text = link_instructions(issued, emphasis="**")
    assert "**ABCD2345**" in text and "/link ABCD2345" in text
    assert "other account" in text and "expires in 10 minutes, at 12:30 UTC" in text


def test_the_confirmation_names_the_other_platforms() -> None:
    result = LinkResult("discord:1", "telegram:2", ("discord:1", "telegram:2", "slack:U3"))
    assert "your Discord and Slack account" in linked_message(result, "telegram:2")


def test_relationships_combine_counts_dates_feelings_and_name() -> None:
    older = RelationshipProfile(
        "telegram:2",
        interactions=30,
        first_seen=datetime(2025, 1, 1, tzinfo=UTC),
        last_seen=datetime(2025, 6, 1, tzinfo=UTC),
        recent_emotions=("sadness",) * 15,
        preferred_name="Dee",
    )
    newer = RelationshipProfile(
        "discord:1",
        interactions=12,
        first_seen=datetime(2025, 5, 1, tzinfo=UTC),
        last_seen=datetime(2025, 9, 1, tzinfo=UTC),
        recent_emotions=("joy",) * 10,
    )
    merged = merge_relationships(newer, older)
    assert merged.user_key == "discord:1" and merged.interactions == 42
    assert merged.first_seen == older.first_seen and merged.last_seen == newer.last_seen
    assert merged.preferred_name == "Dee"
    assert len(merged.recent_emotions) == RECENT_EMOTIONS
    assert merged.recent_emotions[-10:] == ("joy",) * 10, "the latest feelings come last"
    assert merged.stage(datetime(2025, 9, 2, tzinfo=UTC)) == "familiar"
