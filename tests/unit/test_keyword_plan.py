"""``keyword_plan``: which words of a PostgreSQL keyword search find memories, and how each weighs."""

from __future__ import annotations

import math

import pytest

from storage.sql.store import keyword_plan


def test_rarer_words_weigh_more_and_weights_follow_bm25() -> None:
    plan = keyword_plan(
        {"lisbon": 3, "sister": 40, "coffe": 900}, 100_000, max_docs=2000, max_candidates=2000
    )
    assert plan is not None
    assert plan.weights["lisbon"] > plan.weights["sister"] > plan.weights["coffe"] > 0
    assert plan.weights["lisbon"] == pytest.approx(math.log(1 + (100_000 - 3 + 0.5) / 3.5))


def test_the_rarest_words_find_memories_up_to_max_docs_matches() -> None:
    counts = {"work": 30_000, "coffe": 900, "sister": 600, "lisbon": 3, "week": 1500}
    plan = keyword_plan(counts, 100_000, max_docs=2000, max_candidates=2000)
    assert plan is not None
    assert plan.finding == ("lisbon", "sister", "coffe")  # 3 + 600 + 900 <= 2000; + 1500 is not
    assert set(plan.weights) == set(counts)  # the common words still weigh in


def test_a_word_over_max_docs_alone_finds_nothing() -> None:
    assert keyword_plan({"work": 30_000, "today": 2001}, 100_000, max_docs=2000, max_candidates=2000) is None
    plan = keyword_plan({"work": 30_000, "today": 2000}, 100_000, max_docs=2000, max_candidates=2000)
    assert plan is not None and plan.finding == ("today",)


def test_words_no_memory_holds_are_left_out() -> None:
    assert keyword_plan({}, 10, max_docs=5, max_candidates=5) is None
    assert keyword_plan({"astronomy": 0}, 10, max_docs=5, max_candidates=5) is None
    plan = keyword_plan({"astronomy": 0, "lake": 2}, 10, max_docs=5, max_candidates=5)
    assert plan is not None and plan.finding == ("lake",) and set(plan.weights) == {"lake"}


def test_weights_stay_positive_when_a_count_exceeds_the_total() -> None:
    # one snapshot never shows this, but a weight must not fail on it
    plan = keyword_plan({"lake": 7}, 5, max_docs=10, max_candidates=10)
    assert plan is not None and plan.weights["lake"] > 0


def test_words_past_the_rarest_find_memories_only_within_max_candidates() -> None:
    counts = {"lisbon": 30, "sister": 200, "coffe": 400, "week": 1500}
    plan = keyword_plan(counts, 100_000, max_docs=2000, max_candidates=500)
    assert plan is not None and plan.finding == ("lisbon", "sister")  # 30 + 200; + 400 is over 500
    # the rarest word finds memories even past max_candidates, never past max_docs
    plan = keyword_plan({"week": 1500, "work": 1800}, 100_000, max_docs=2000, max_candidates=500)
    assert plan is not None and plan.finding == ("week",)
    plan = keyword_plan({"week": 1500, "work": 1800}, 100_000, max_docs=1000, max_candidates=5000)
    assert plan is None
    plan = keyword_plan({"lake": 10, "week": 1500}, 100_000, max_docs=1000, max_candidates=5000)
    assert plan is not None and plan.finding == ("lake",)  # no word over max_docs ever finds
