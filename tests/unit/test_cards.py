"""Character cards (V1, V2, V3; JSON and PNG) imported as personas, and what reaches the prompt."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.settings import PACKAGED_PERSONAS
from engine.cards import DEFAULT_SYSTEM_PROMPT, MAX_CARD_FILE_BYTES, MAX_CARD_JSON_BYTES, read_card
from engine.errors import InputError
from engine.events import Turn
from engine.persona import Persona, PersonaLibrary
from engine.prompt import LORE_HEADER, PromptBudget, build_prompt, estimate_tokens
from tests.fakes.character_cards import (
    ELDORIA,
    MOONSTONE,
    THE_COUNCIL,
    encoded,
    json_bytes,
    png_card,
    png_v2,
    png_v3,
    v2_card,
    v3_card,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def turns(*pairs: tuple[str, str]) -> list[Turn]:
    out = []
    for index, (user, bot) in enumerate(pairs):
        out.append(Turn("user", user, "Robin", T0 + timedelta(minutes=2 * index)))
        out.append(Turn("assistant", bot, "Seraphina", T0 + timedelta(minutes=2 * index + 1)))
    return out


def prompt_for(persona: Persona, message: str, history: list[Turn] | None = None, **kwargs: object):
    options: dict[str, object] = {"budget": PromptBudget(total_tokens=4096, reply_tokens=256)}
    options.update(kwargs)
    return build_prompt(
        persona=persona,
        user_message=message,
        user_name="Robin",
        turns=history or [],
        memories=[],
        profile=None,
        **options,  # type: ignore[arg-type]
    )


def context_of(prompt) -> str:  # type: ignore[no-untyped-def]
    return prompt.messages[-2].content


# --- reading cards -------------------------------------------------------------------------------


def test_a_v2_json_card_becomes_a_persona_with_every_field() -> None:
    card = read_card(json_bytes(v2_card()), filename="seraphina.json")
    persona = card.persona
    assert card.spec == "chara_card_v2"
    assert persona.name == "seraphina" and persona.speaker == "Seraphina"
    assert persona.character.startswith("{{char}} is a gentle forest guardian")
    assert persona.description == "Seraphina is a gentle forest guardian with silver hair."
    assert persona.personality == "caring, protective, a little mischievous"
    assert persona.scenario == "{{user}} wakes up wounded in {{char}}'s glade after a storm."
    assert persona.first_message.startswith("*{{char}} kneels beside you.*")
    assert persona.examples == (
        ("Who are you?", "I am {{char}}, keeper of this forest."),
        ("Where am I?", "In my glade. Rest a while."),
    )
    # {{original}} is the default system prompt; the card's addition follows it
    assert persona.system_prompt == f"{DEFAULT_SYSTEM_PROMPT} Never speak for {{{{user}}}}."
    assert persona.post_history_instructions.startswith("Stay in character as {{char}}")
    assert persona.lorebook is not None and persona.lorebook.scan_depth == 2
    assert persona.lorebook.token_budget == 400
    assert [(e.keys, e.insertion_order, e.priority) for e in persona.lorebook.entries] == [
        (("Eldoria", "forest kingdom"), 20, 5),
        (("moonstone",), 10, 1),
        (("council",), 30, 0),
    ]
    council = persona.lorebook.entries[2]
    assert council.selective and council.secondary_keys == ("moon",)
    # what the prompt does not use is kept, extensions included
    metadata = card.document["card"]
    assert metadata["creator_notes"] == "Best with a warm, slow roleplay."
    assert metadata["extensions"]["depth_prompt"] == {"prompt": "", "depth": 4}
    assert metadata["alternate_greetings"] == ["*{{char}} hums a tune.* Oh! A visitor."]
    assert "lorebook entries" in card.summary() and "first message" in card.summary()


def test_a_v3_json_card_uses_its_nickname_and_leaves_out_regex_entries() -> None:
    card = read_card(json_bytes(v3_card()), filename="sera.json")
    assert card.spec == "chara_card_v3"
    assert card.persona.name == "seraphina" and card.persona.speaker == "Sera"
    assert card.persona.lorebook is not None
    assert [e.content for e in card.persona.lorebook.entries] == [ELDORIA, MOONSTONE, THE_COUNCIL]
    assert card.notes == ("1 lorebook entry with regular-expression keys left out",)
    assert "character card V3" in card.summary()


def test_a_png_card_made_with_pillow_reads_like_its_json() -> None:
    from_png = read_card(png_v2(), filename="seraphina.png")
    from_json = read_card(json_bytes(v2_card()), filename="seraphina.json")
    assert from_png.persona == from_json.persona
    assert from_png.document == from_json.document


def test_a_png_with_both_chunks_is_read_from_ccv3() -> None:
    both = png_v3(v3_card("Seraphina"), with_v2=v2_card("Someone Else"))
    card = read_card(both, filename="both.png")
    assert card.spec == "chara_card_v3" and card.persona.name == "seraphina"


def test_a_v1_card_and_a_name_with_spaces() -> None:
    v1 = {
        "name": "Captain Rook",
        "description": "<BOT> is a retired sky pirate.",
        "personality": "gruff",
        "scenario": "",
        "first_mes": "Ahoy, <USER>.",
        "mes_example": "Rook talks like an old sailor.",
    }
    persona = read_card(json_bytes(v1), filename="rook.json").persona
    assert persona.name == "captain-rook" and persona.speaker == "Captain Rook"
    assert persona.character == "{{char}} is a retired sky pirate."
    assert persona.first_message == "Ahoy, {{user}}."
    assert persona.examples == () and persona.example_dialogue == "Rook talks like an old sailor."
    assert persona.system_prompt == DEFAULT_SYSTEM_PROMPT


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _corrupted_crc() -> bytes:
    data = bytearray(png_v2())
    start = data.index(b"tEXt")
    data[start + 10] ^= 0x01  # a byte of the chunk's keyword/text
    return bytes(data)


def _oversized_png_chunk() -> bytes:
    big = v2_card(description="x" * (MAX_CARD_JSON_BYTES + 10))
    return png_card(("chara", encoded(big)))


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"GIF89a not a card", "expected a PNG image or a JSON file"),
        (b"{ not json", "not valid JSON"),
        (b'["a list"]', "expected a PNG image or a JSON file"),
        (json_bytes({"spec": "chara_card_v2", "spec_version": "2.0"}), "has no 'data' object"),
        (json_bytes({"spec": "chara_card_v9", "data": {}}), "unknown spec 'chara_card_v9'"),
        (json_bytes(v2_card(name="")), "has no 'name'"),
        (json_bytes(v2_card(name="!!!")), "no letters or digits"),
        (json_bytes(v2_card(name=["Seraphina"])), "'name' must be text"),
        (json_bytes(v2_card(description={"text": "x"})), "'description' must be text"),
        (json_bytes(v2_card(personality="a lone \ud800 surrogate")), "not valid Unicode"),
        (b'{"name": "Deep", "extensions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (
            json_bytes(
                v2_card(character_book={"entries": [{"keys": ["a"], "content": "x", "priority": 1e400}]})
            ),
            "'priority' must be a number",
        ),
        (
            json_bytes(v2_card(character_book={"entries": [], "token_budget": float("nan")})),
            "'token_budget' must be a number",
        ),
        (json_bytes(v2_card(tags="fantasy")), "'tags' must be a list of texts"),
        (json_bytes(v2_card(character_book={"entries": "none"})), "needs a list of 'entries'"),
        (
            json_bytes(v2_card(character_book={"entries": [{"keys": "moon", "content": "x"}]})),
            "lorebook entry 1: 'keys' must be a list of texts",
        ),
        (
            json_bytes(
                v2_card(character_book={"entries": [{"keys": ["moon"], "content": "x", "enabled": "yes"}]})
            ),
            "'enabled' must be true or false",
        ),
        (png_card(("Comment", "just a picture")), "PNG without a character card"),
        (png_card(("chara", "not base64 at all!")), "not valid base64"),
        (png_card(("chara", base64.b64encode(b"{oops").decode())), "not valid JSON"),
        (_corrupted_crc(), "fails its CRC check"),
        (png_v2()[:-20], "damaged PNG"),
        (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", b"\0" * 13), "no IEND chunk"),
        (_oversized_png_chunk(), "too large"),
        (json_bytes(v2_card(description="x" * MAX_CARD_JSON_BYTES)), "too large"),
        (b"{" + b" " * MAX_CARD_FILE_BYTES + b"}", "too large for a character card"),
    ],
)
def test_malformed_or_oversized_cards_get_one_clear_error(data: bytes, complaint: str) -> None:
    with pytest.raises(InputError, match=r"card|PNG|JSON") as info:
        read_card(data, filename="upload.png")
    assert complaint in str(info.value)
    assert "upload.png" in str(info.value)


# --- installing ----------------------------------------------------------------------------------


def library_in(directory: Path) -> PersonaLibrary:
    return PersonaLibrary.from_dirs([PACKAGED_PERSONAS, directory], default="ember")


def test_an_installed_card_is_a_persona_file_that_loads_back_the_same(tmp_path: Path) -> None:
    library = library_in(tmp_path)
    card = read_card(png_v3(), filename="sera.png")
    persona, path = library.install(card.document)
    assert path == tmp_path / "seraphina.yaml"
    assert library.get("Seraphina") == persona == card.persona
    assert library_in(tmp_path).get("seraphina") == persona  # the next start reads it back


def test_an_existing_name_is_refused_unless_replaced_and_nothing_changes(tmp_path: Path) -> None:
    library = library_in(tmp_path)
    library.install(read_card(json_bytes(v2_card()), filename="a.json").document)
    before = (tmp_path / "seraphina.yaml").read_bytes()
    changed = read_card(json_bytes(v2_card(personality="stern")), filename="b.json")
    with pytest.raises(InputError, match="already exists"):
        library.install(changed.document)
    assert (tmp_path / "seraphina.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seraphina.yaml"]
    persona = library.get("seraphina")
    assert persona is not None and persona.personality.startswith("caring")

    with pytest.raises(InputError, match="'ember' already exists"):  # a shipped persona, too
        library.install(read_card(json_bytes(v2_card("Ember")), filename="e.json").document)

    library.install(changed.document, replace=True)
    persona = library.get("seraphina")
    assert persona is not None and persona.personality == "stern"
    assert library_in(tmp_path).get("seraphina") == persona


# --- the prompt ----------------------------------------------------------------------------------


@pytest.fixture
def seraphina() -> Persona:
    return read_card(png_v2(), filename="seraphina.png").persona


def test_the_cards_fields_reach_the_prompt_with_the_names_filled_in(seraphina: Persona) -> None:
    prompt = prompt_for(seraphina, "Hello?")
    system, greeting = prompt.messages[0], prompt.messages[1]
    assert system.role == "system"
    assert system.content.startswith("You are Seraphina. Stay in character")
    assert "Never speak for Robin." in system.content
    assert "Seraphina is a gentle forest guardian with silver hair." in system.content
    assert "Seraphina's personality: caring, protective, a little mischievous" in system.content
    assert "Scenario: Robin wakes up wounded in Seraphina's glade after a storm." in system.content
    assert "User: Who are you?\nYou: I am Seraphina, keeper of this forest." in system.content
    assert (greeting.role, greeting.content) == (
        "assistant",
        "*Seraphina kneels beside you.* Easy now, Robin. You're safe in my glade.",
    )
    context = context_of(prompt)
    assert context.endswith("Stay in character as Seraphina; describe actions in asterisks.")
    assert prompt.messages[-1].content == "Hello?"
    assert all("{{" not in m.content for m in prompt.messages)
    assert "Best with a warm" not in prompt.system_text  # creator notes are not for the model


def test_a_lorebook_entry_comes_only_when_its_key_is_in_recent_turns(seraphina: Persona) -> None:
    quiet = prompt_for(seraphina, "I feel a bit better now.")
    assert quiet.lore_included == () and LORE_HEADER not in context_of(quiet)
    assert ELDORIA not in quiet.system_text

    asked = prompt_for(seraphina, "Is this place part of eldoria?")  # any case, whole words
    assert [e.content for e in asked.lore_included] == [ELDORIA]
    assert f"{LORE_HEADER}\n{ELDORIA}" in context_of(asked)
    assert ELDORIA not in asked.messages[0].content  # per-message text stays out of the persona

    # within the book's scan depth (2 turns) a key in an earlier turn still counts...
    recent = turns(("Tell me about the moonstone.", "It heals."))
    assert [e.content for e in prompt_for(seraphina, "And then?", recent).lore_included] == [MOONSTONE]
    # ...and beyond it, not
    older = turns(("Tell me about the moonstone.", "It heals."), ("ok", "ok"))
    assert prompt_for(seraphina, "And then?", older).lore_included == ()
    # a word that only contains the key does not trigger it
    assert prompt_for(seraphina, "Eldorians?").lore_included == ()


def test_a_selective_entry_needs_a_secondary_key_too(seraphina: Persona) -> None:
    assert prompt_for(seraphina, "Who is on the council?").lore_included == ()
    both = prompt_for(seraphina, "Who is on the Moon council?")
    assert [e.content for e in both.lore_included] == [THE_COUNCIL]


def test_triggered_entries_follow_insertion_order(seraphina: Persona) -> None:
    prompt = prompt_for(seraphina, "Does the moonstone come from Eldoria? Ask the moon council.")
    assert [e.content for e in prompt.lore_included] == [MOONSTONE, ELDORIA, THE_COUNCIL]  # 10, 20, 30
    context = context_of(prompt)
    assert context.index(MOONSTONE) < context.index(ELDORIA) < context.index(THE_COUNCIL)


def test_the_lorebook_keeps_within_its_budget_by_priority(seraphina: Persona) -> None:
    assert seraphina.lorebook is not None
    room = estimate_tokens(LORE_HEADER) + 1 + estimate_tokens(ELDORIA) + 1 + 2
    book = type(seraphina.lorebook)(entries=seraphina.lorebook.entries, scan_depth=2, token_budget=room)
    tight = Persona(**{**{f: getattr(seraphina, f) for f in Persona.__slots__}, "lorebook": book})
    prompt = prompt_for(tight, "Does the moonstone come from Eldoria?")
    # both are triggered; only one fits: Eldoria (priority 5) is kept over the moonstone (1)
    assert [e.content for e in prompt.lore_included] == [ELDORIA]
    assert MOONSTONE not in context_of(prompt)


def test_the_lorebook_keeps_within_the_prompt_budget(seraphina: Persona) -> None:
    budget = PromptBudget(total_tokens=530, reply_tokens=100)
    message = "Does the moonstone come from Eldoria? Ask the moon council."
    history = turns(*[(f"Question {i} about the glade and the trees?", "Answer " * 30) for i in range(20)])
    prompt = prompt_for(seraphina, message, history, budget=budget)
    # all three are triggered; a quarter of what the persona and the message leave has room for
    # one: the one of highest priority
    assert [e.content for e in prompt.lore_included] == [ELDORIA]
    block = f"{LORE_HEADER}\n{ELDORIA}"
    assert block in context_of(prompt)
    assert estimate_tokens(block) < budget.input_tokens // 4
    assert prompt.turns_included > 0 and prompt.turns_dropped > 0  # the turns got the rest
    spent = sum(estimate_tokens(m.content) + 4 for m in prompt.messages)
    assert spent <= prompt.tokens <= budget.input_tokens


def test_compact_prompts_carry_the_greeting_examples_and_lore(seraphina: Persona) -> None:
    prompt = prompt_for(seraphina, "What is Eldoria?", style="compact")
    roles = [m.role for m in prompt.messages]
    assert roles[:6] == ["system", "assistant", "user", "assistant", "user", "assistant"]
    assert prompt.messages[0].content.startswith("You are Seraphina. Seraphina is a gentle forest guardian")
    assert prompt.messages[2].content == "Who are you?"
    assert ELDORIA in context_of(prompt)


def test_a_yaml_persona_without_card_fields_builds_the_same_prompt_as_before() -> None:
    ember = PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember").default
    prompt = prompt_for(ember, "Hi!")
    assert [m.role for m in prompt.messages] == ["system", "system", "user"]
    assert prompt.messages[0].content == ember.system_text()
    assert prompt.lore_included == ()


def test_the_card_document_is_plain_yaml_data(tmp_path: Path) -> None:
    card = read_card(json_bytes(v3_card()), filename="sera.json")
    json.dumps(card.document)  # nothing but JSON-able values: it is written as YAML


def test_the_summary_says_when_the_persona_alone_fills_most_of_the_prompt() -> None:
    budget = PromptBudget(total_tokens=2048, reply_tokens=256)
    assert "note: the persona alone" not in read_card(png_v2(), filename="s.png").summary(budget)
    wordy = read_card(json_bytes(v2_card(description="She remembers every tree. " * 200)), filename="w.json")
    note = wordy.summary(budget).splitlines()[-1]
    assert note.startswith("note: the persona alone is about ")
    assert note.endswith(
        "tokens of the prompt's 1792: little room is left for the conversation "
        "(a larger CONTEXT_TOKEN_BUDGET gives more)"
    )
