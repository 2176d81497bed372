"""Fuzzing character-card import: random bytes, damaged PNG cards and JSON cards of any shape are
either a persona that can be stored and read back, or one InputError — never another exception."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import PACKAGED_PERSONAS
from engine.cards import read_card
from engine.errors import InputError
from engine.persona import PersonaLibrary
from engine.prompt import PromptBudget, build_prompt
from tests.fakes.character_cards import json_bytes, png_v2, v2_card

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PNG = png_v2()
CARD = v2_card()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def imports_or_refuses(data: bytes, directory: Path) -> None:
    library = PersonaLibrary.from_dirs([PACKAGED_PERSONAS, directory], default="ember")
    try:
        card = read_card(data, filename="fuzz.png")
        persona, _ = library.install(card.document, replace=True)
    except InputError as exc:
        assert len(str(exc)) > 10 and ("fuzz.png" in str(exc) or "persona" in str(exc))
        return
    assert (
        PersonaLibrary.from_dirs([PACKAGED_PERSONAS, directory], default="ember").get(persona.name) == persona
    )
    prompt = build_prompt(
        persona=persona,
        user_message="hello there",
        user_name="Fuzz",
        turns=[],
        memories=[],
        profile=None,
        budget=PromptBudget(),
    )
    assert prompt.messages[-1].content == "hello there"


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_are_refused(data: bytes, tmp_path: Path) -> None:
    imports_or_refuses(data, tmp_path)


@FUZZ
@given(position=st.integers(min_value=0, max_value=len(PNG) - 1), value=st.integers(0, 255))
def test_a_damaged_png_card_is_refused_or_read(position: int, value: int, tmp_path: Path) -> None:
    damaged = bytearray(PNG)
    damaged[position] = value
    imports_or_refuses(bytes(damaged), tmp_path)


@FUZZ
@given(field=st.sampled_from(sorted(CARD["data"])), value=json_values)
def test_any_value_in_any_field_is_refused_or_stored(field: str, value: object, tmp_path: Path) -> None:
    card = json.loads(json.dumps(CARD))
    card["data"][field] = value
    imports_or_refuses(json_bytes(card), tmp_path)


@FUZZ
@given(
    entry=st.dictionaries(
        st.sampled_from(
            [
                "keys",
                "content",
                "enabled",
                "priority",
                "selective",
                "secondary_keys",
                "constant",
                "insertion_order",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_any_lorebook_entry_is_refused_or_stored(entry: dict[str, object], tmp_path: Path) -> None:
    card = json.loads(json.dumps(CARD))
    card["data"]["character_book"]["entries"].append(entry)
    imports_or_refuses(json_bytes(card), tmp_path)
