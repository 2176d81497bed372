"""The statement reader (``engine/statements.py``) and the contradiction rules on the phrasing
corpus ``tests/data/phrasings.toml``: what kind of statement each phrasing is, and whether,
said after a stored fact, it replaces it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine.memory_care import (
    NOT_ASSERTED_IMPORTANCE,
    QUESTION_IMPORTANCE,
    confirmation_prompt,
    conflicts,
    contradicts,
    read_confirmation,
    score_importance,
)
from engine.statements import KINDS, NOT_ASSERTED, parts, split_speaker, stated_facts, statement_kind

CORPUS = tomllib.loads((Path(__file__).parent.parent / "data" / "phrasings.toml").read_text())
SCENARIOS: list[dict[str, Any]] = CORPUS["scenario"]
PHRASINGS: list[tuple[str, str]] = (
    [(s["stored"], "fact") for s in SCENARIOS]
    + [(then["text"], then["kind"]) for s in SCENARIOS for then in s["then"]]
    + [(p["text"], p["kind"]) for p in CORPUS["phrasing"]]
)
CHANGES = [(s["stored"], then) for s in SCENARIOS for then in s["then"]]


def test_the_corpus_is_large_and_varied() -> None:
    assert len(PHRASINGS) >= 100
    assert {kind for _, kind in PHRASINGS} == set(KINDS)
    assert sum(1 for _, then in CHANGES if then.get("supersedes")) >= 20


@pytest.mark.parametrize(("text", "kind"), PHRASINGS, ids=[text for text, _ in PHRASINGS])
def test_kind_of_each_phrasing(text: str, kind: str) -> None:
    assert statement_kind(text) == kind, [(p.text, p.kind) for p in parts(text)]


@pytest.mark.parametrize("stored", [s["stored"] for s in SCENARIOS])
def test_every_stored_fact_fills_a_slot(stored: str) -> None:
    assert stated_facts(stored)


def _said_after(stored: str, then: dict[str, Any]) -> Any:
    marks = [pytest.mark.xfail(reason=then["rules_miss"], strict=True)] if "rules_miss" in then else []
    return pytest.param(stored, then["text"], then.get("supersedes", False), marks=marks, id=then["text"])


@pytest.mark.parametrize(("stored", "text", "supersedes"), [_said_after(s, t) for s, t in CHANGES])
def test_rules_read_a_change_of_fact_and_nothing_else(stored: str, text: str, supersedes: bool) -> None:
    assert contradicts(f"Alice: {stored}", f"Alice: {text}") == supersedes, stated_facts(text)


def test_what_is_not_a_fact_never_contradicts() -> None:
    for stored, then in CHANGES:
        if then["kind"] != "fact":
            assert not conflicts(f"Alice: {stored}", f"Alice: {then['text']}"), then["text"]


def test_only_the_same_speaker_contradicts_themself() -> None:
    # one scope may hold several speakers' words (a group's conversation imported as one)
    assert not contradicts("Caroline: I live in Berlin", "Melanie: I live in Lisbon")
    assert contradicts("Caroline: I live in Berlin", "caroline: i live in lisbon now")


def test_a_memory_that_holds_another_fact_is_not_contradicted() -> None:
    older = "Alice: I live in Berlin and I work as a nurse"
    assert not contradicts(older, "Alice: I live in Lisbon now")
    assert contradicts(older, "Alice: I live in Lisbon and I work as a nurse")


def test_the_issue_s_misreading() -> None:
    fact = "Alice: My dog is called Biscuit."
    question = "Alice: Do you remember what my dog is called?"
    assert stated_facts(split_speaker(question)[1]) == {}
    assert not contradicts(fact, question)
    assert stated_facts("my dog is called what") == {}  # a question word is no value


def test_parts_and_where_their_words_count() -> None:
    # a retraction takes back what came before it, not what follows
    assert [p.kind for p in parts("my name is batman. jk its alice")] == ["joke", "joke", "fact"]
    assert stated_facts("my name is batman. jk its alice") == {}
    # "remember?" only tags a statement; "right?" asks
    assert statement_kind("my dog is called rex, remember?") == "fact"
    assert statement_kind("my dog is called rex, right?") == "question"
    # a "not" after the value does not make the slot a negation
    [fact] = stated_facts("my dog is called biscotti not biscuit").values()
    assert (fact.slot, fact.value) == ("name of dog", "biscotti")
    # a condition covers the rest of its sentence, not the sentence after it
    assert stated_facts("if i win, i live in a castle") == {}
    assert stated_facts("if you visit, tell me. i live in lisbon")["live"].value == "lisbon"
    # the speaker's own report of what they said is a statement; someone else's is a quote
    assert statement_kind("like i said, i live in lisbon") == "fact"
    assert statement_kind("she said i live in lisbon") == "quote"


def test_values_are_read_the_same_however_they_are_written() -> None:
    assert stated_facts("My birthday is on May 3rd.")["birthday"].value == "may 3"
    assert stated_facts("my bday is may 3 🎉")["birthday"].value == "may 3"
    assert stated_facts("my fav color rn is purple 💜")["favourite color"].value == "purple"
    assert stated_facts("I\u2019m 35 years old now")["age"].value == "35"  # a typographic apostrophe
    assert stated_facts("i'm 5 minutes away") == {}


def test_importance_of_what_is_not_a_fact() -> None:
    for text, kind in PHRASINGS:
        if kind == "question":
            assert score_importance(text) == QUESTION_IMPORTANCE, text
        elif kind in NOT_ASSERTED:
            assert score_importance(text) <= NOT_ASSERTED_IMPORTANCE, text
    assert score_importance("My dog is called Biscuit.") > NOT_ASSERTED_IMPORTANCE
    assert score_importance("Do you remember what my dog is called?") < score_importance("hi there")


def test_the_llm_is_asked_yes_or_no_and_only_yes_confirms() -> None:
    system, user = confirmation_prompt("Alice: I live in Berlin", "Alice: I live in Lisbon now")
    assert system.role == "system" and "yes or no" in system.content
    assert '"I live in Berlin"' in user.content and '"I live in Lisbon now"' in user.content
    assert "Alice" in user.content
    assert read_confirmation("Yes.")
    assert read_confirmation("<think>Berlin then Lisbon: a move.</think>\nyes")
    assert not read_confirmation("No, those are two different dogs.")
    assert not read_confirmation("I think so")
    assert not read_confirmation("<think>unfinished")
    assert not read_confirmation(None)
