"""Character cards (Tavern Card V1, V2 and V3) read as persona documents.

A card is JSON, alone in a ``.json`` file or base64-encoded in a PNG text chunk: keyword
``ccv3`` for V3, ``chara`` for V2 (and V1); when a PNG has both, ``ccv3`` is read. V2/V3 cards
are ``{"spec": "chara_card_v2" | "chara_card_v3", "spec_version", "data": {...}}``; a V1 card
has the fields at the top level. :func:`read_card` turns one into the document of a persona
file (see ``engine/persona.py``), which :meth:`PersonaLibrary.install` writes and loads:

    card field                  persona
    name (V3: nickname)         name (lowercase, spaces as -), display_name ({{char}})
    description                 character; its first sentence is the description
    personality, scenario       personality, scenario
    first_mes                   first_message
    mes_example                 examples (user/assistant pairs), else example_dialogue as written
    system_prompt               system_prompt ({{original}}: the default below); default:
                                "You are {{char}}. ..."
    post_history_instructions   post_history_instructions
    character_book              lorebook (entries with regular-expression keys are left out)
    the rest                    card: kept as metadata (creator, tags, extensions, ...), unused

Limits: a file over :data:`MAX_CARD_FILE_BYTES` or a card's JSON over :data:`MAX_CARD_JSON_BYTES`
is refused before it is parsed; PNG chunks are walked (CRC-checked) without decoding the
image. Everything wrong with a card raises one :class:`InputError` that says what.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError, InputError
from engine.persona import Persona, fill_macros, parse_persona
from engine.prompt import PromptBudget, build_prompt

MAX_CARD_FILE_BYTES = 8 * 1024 * 1024
"""Largest card file accepted (a PNG is mostly its image, which is never decoded)."""
MAX_CARD_JSON_BYTES = 1024 * 1024
"""Largest card JSON accepted: a ``.json`` file, or the text decoded from a PNG chunk."""
MAX_NAME_CHARS = 64

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("ccv3", "chara")
"""PNG text keywords of a card, the preferred first."""

DEFAULT_SYSTEM_PROMPT = (
    "You are {{char}}. Stay in character: answer as {{char}} would, in {{char}}'s own voice, "
    "in a conversation with {{user}}."
)
_TEXT_FIELDS = (
    "name",
    "nickname",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "creator",
    "character_version",
)


@dataclass(frozen=True, slots=True)
class Card:
    """A card read and checked: the persona document, and what was left out of it."""

    document: dict[str, Any]
    persona: Persona
    spec: str
    """``chara_card_v1``, ``chara_card_v2`` or ``chara_card_v3``."""
    notes: tuple[str, ...] = field(default=())

    def summary(self, budget: PromptBudget | None = None) -> str:
        """What the import made of the card, in a few lines; with the prompt ``budget``, a note
        when the persona alone takes most of it."""
        persona = self.persona
        parts = [
            label
            for label, present in (
                ("description", persona.character),
                ("personality", persona.personality),
                ("scenario", persona.scenario),
                ("first message", persona.first_message),
                ("example dialogue", persona.examples or persona.example_dialogue),
                ("system prompt", self.document.get("system_prompt") != DEFAULT_SYSTEM_PROMPT),
                ("post-history instructions", persona.post_history_instructions),
            )
            if present
        ]
        entries = len(persona.lorebook.entries) if persona.lorebook else 0
        if entries:
            parts.append(f"{entries} lorebook entr{'y' if entries == 1 else 'ies'}")
        version = self.spec.removeprefix("chara_card_").upper()
        lines = [
            f"Imported {persona.speaker} as persona {persona.name} (character card {version})",
            f"with: {', '.join(parts) or 'a name only'}",
            *(f"note: {note}" for note in self.notes),
        ]
        if budget is not None:
            fixed = build_prompt(
                persona=persona,
                user_message="",
                user_name="",
                turns=[],
                memories=[],
                profile=None,
                budget=budget,
            ).tokens
            if fixed > budget.input_tokens // 2:
                lines.append(
                    f"note: the persona alone is about {fixed} tokens of the prompt's {budget.input_tokens}: "
                    "little room is left for the conversation (a larger CONTEXT_TOKEN_BUDGET gives more)"
                )
        return "\n".join(lines)


def check_card_size(size: int, filename: str) -> None:
    """Refuse a card file over :data:`MAX_CARD_FILE_BYTES` (before it is read, where possible)."""
    if size > MAX_CARD_FILE_BYTES:
        limit = _size(MAX_CARD_FILE_BYTES)
        raise InputError(
            f"{filename} is too large for a character card ({_size(size)}; the limit is {limit})"
        )


def read_card(data: bytes, *, filename: str = "card") -> Card:
    """Parse a card file (PNG or JSON, told apart by its content); raises InputError."""
    check_card_size(len(data), filename)
    if data.startswith(PNG_SIGNATURE):
        raw = _card_text_from_png(data, filename)
    elif data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        raw = data
    else:
        raise InputError(f"{filename} is not a character card: expected a PNG image or a JSON file")
    if len(raw) > MAX_CARD_JSON_BYTES:
        limit = _size(MAX_CARD_JSON_BYTES)
        raise InputError(
            f"the card in {filename} is too large ({_size(len(raw))} of JSON; the limit is {limit})"
        )
    try:
        card = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"the card in {filename} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"the card in {filename} is nested too deeply") from None
    try:  # JSON can escape what UTF-8 cannot hold (lone surrogates): no file could keep it
        json.dumps(card, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"the card in {filename} has text that is not valid Unicode") from None
    except RecursionError:
        raise InputError(f"the card in {filename} is nested too deeply") from None
    return card_from_json(card, filename=filename)


def card_from_json(card: Any, *, filename: str = "card") -> Card:
    """A card's decoded JSON as a persona document; raises InputError."""
    if not isinstance(card, Mapping):
        raise InputError(f"the card in {filename} must be a JSON object")
    spec = card.get("spec")
    if spec in ("chara_card_v2", "chara_card_v3"):
        data = card.get("data")
        if not isinstance(data, Mapping):
            raise InputError(f"the card in {filename} ({spec}) has no 'data' object")
    elif spec is None or spec == "chara_card_v1":
        data, spec = card, "chara_card_v1"  # V1: the fields at the top level
    else:
        raise InputError(
            f"the card in {filename} has an unknown spec {spec!r} (expected chara_card_v2 or v3)"
        )
    try:
        document, notes = _document(data, str(spec), filename)
        persona = parse_persona(document, source=filename)
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    return Card(document=document, persona=persona, spec=str(spec), notes=tuple(notes))


# --- PNG ---------------------------------------------------------------------------------------


def _card_text_from_png(data: bytes, filename: str) -> bytes:
    """The card's JSON from a PNG's ``ccv3`` or ``chara`` text chunk (tEXt, iTXt or zTXt)."""
    found: dict[str, bytes] = {}
    position = len(PNG_SIGNATURE)
    ended = False
    while position < len(data):
        if position + 8 > len(data):
            raise InputError(f"{filename} is a damaged PNG (it ends inside a chunk)")
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            raise InputError(f"{filename} is a damaged PNG (it ends inside a chunk)")
        body = data[position + 8 : end - 4]
        if zlib.crc32(kind + body) != int.from_bytes(data[end - 4 : end], "big"):
            raise InputError(
                f"{filename} is a damaged PNG (a {kind.decode('latin-1')!r} chunk fails its CRC check)"
            )
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            keyword, text = _png_text(kind, body, filename)
            if keyword.lower() in CARD_KEYWORDS and keyword.lower() not in found:
                found[keyword.lower()] = text
        position = end
        if kind == b"IEND":
            ended = True
            break
    if not ended:
        raise InputError(f"{filename} is a damaged PNG (no IEND chunk)")
    for keyword in CARD_KEYWORDS:
        if keyword in found:
            return _decode_base64(found[keyword], keyword, filename)
    raise InputError(f"{filename} is a PNG without a character card (no 'chara' or 'ccv3' text chunk)")


def _png_text(kind: bytes, body: bytes, filename: str) -> tuple[str, bytes]:
    keyword, separator, rest = body.partition(b"\0")
    if not separator:
        raise InputError(f"{filename} is a damaged PNG (a text chunk has no keyword)")
    name = keyword.decode("latin-1")
    if name.lower() not in CARD_KEYWORDS:
        return name, b""
    if kind == b"tEXt":
        return name, rest
    if kind == b"zTXt":
        return name, _inflate(rest[1:], filename)
    # iTXt: compression flag, method, language\0, translated keyword\0, text
    if len(rest) < 2:
        raise InputError(f"{filename} is a damaged PNG (a short iTXt chunk)")
    compressed = rest[0] == 1
    _, _, after_language = rest[2:].partition(b"\0")
    _, _, text = after_language.partition(b"\0")
    return name, _inflate(text, filename) if compressed else text


def _inflate(data: bytes, filename: str) -> bytes:
    limit = _base64_length(MAX_CARD_JSON_BYTES)
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InputError(f"{filename} is a damaged PNG (a compressed text chunk: {exc})") from None
    if len(text) > limit:
        raise InputError(f"the card in {filename} is too large (over {_size(MAX_CARD_JSON_BYTES)} of JSON)")
    return text


def _base64_length(size: int) -> int:
    return (size + 2) // 3 * 4


def _decode_base64(text: bytes, keyword: str, filename: str) -> bytes:
    compact = re.sub(rb"\s+", b"", text)
    if len(compact) > _base64_length(MAX_CARD_JSON_BYTES):
        raise InputError(f"the card in {filename} is too large (over {_size(MAX_CARD_JSON_BYTES)} of JSON)")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"the card in {filename} ({keyword!r} text chunk) is not valid base64") from None


def _size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    return f"{size / 1024:.0f} KiB" if size >= 1024 else f"{size} bytes"


# --- the card's fields -------------------------------------------------------------------------


_LEGACY_MACROS = (
    (re.compile(r"<BOT>", re.IGNORECASE), "{{char}}"),
    (re.compile(r"<USER>", re.IGNORECASE), "{{user}}"),
)


def _legacy(text: str) -> str:
    """V1's ``<BOT>`` and ``<USER>`` as ``{{char}}`` and ``{{user}}``."""
    for pattern, macro in _LEGACY_MACROS:
        text = pattern.sub(macro, text)
    return text


def _texts(data: Mapping[str, Any], filename: str) -> dict[str, str]:
    texts: dict[str, str] = {}
    for key in _TEXT_FIELDS:
        value = data.get(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise InputError(f"the card in {filename}: {key!r} must be text, not {type(value).__name__}")
        texts[key] = _legacy(value.replace("\r\n", "\n"))
    return texts


def _strings(data: Mapping[str, Any], key: str, filename: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"the card in {filename}: {key!r} must be a list of texts")
    return list(value)


def persona_name(name: str) -> str:
    """The persona name (file name, command option) for a card's character name."""
    return re.sub(r"[^\w-]+", "-", name.strip().lower()).strip("-_")[:MAX_NAME_CHARS].strip("-_")


_FIRST_SENTENCE = re.compile(r".+?[.!?](?=\s|$)", re.DOTALL)


def _first_sentence(text: str, *, limit: int = 200) -> str:
    flat = " ".join(text.split())
    match = _FIRST_SENTENCE.match(flat)
    sentence = match.group(0) if match else flat
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


def _document(data: Mapping[str, Any], spec: str, filename: str) -> tuple[dict[str, Any], list[str]]:
    texts = _texts(data, filename)
    display = texts["nickname"].strip() or texts["name"].strip()  # V3: {{char}} is the nickname
    if not texts["name"].strip():
        raise InputError(f"the card in {filename} has no 'name'")
    if len(texts["name"].strip()) > MAX_NAME_CHARS:
        raise InputError(f"the card in {filename} has a name longer than {MAX_NAME_CHARS} characters")
    name = persona_name(texts["name"])
    if not name:
        raise InputError(f"the card in {filename}: its name {texts['name']!r} has no letters or digits")
    notes: list[str] = []
    system_prompt = texts["system_prompt"].strip()
    system_prompt = (
        re.sub(r"\{\{original\}\}", DEFAULT_SYSTEM_PROMPT, system_prompt, flags=re.IGNORECASE)
        if system_prompt
        else DEFAULT_SYSTEM_PROMPT
    )
    post_history = re.sub(r"\{\{original\}\}", "", texts["post_history_instructions"], flags=re.IGNORECASE)
    description = texts["description"].strip()
    document: dict[str, Any] = {
        "name": name,
        "display_name": display,
        "description": _first_sentence(fill_macros(description, char=display, user="you"))
        if description
        else "",
        "system_prompt": system_prompt,
        "short_prompt": f"You are {display}." + (f" {_first_sentence(description)}" if description else ""),
        "character": description,
        "personality": texts["personality"].strip(),
        "scenario": texts["scenario"].strip(),
        "first_message": texts["first_mes"].strip(),
        "post_history_instructions": post_history.strip(),
    }
    examples, dialogue = _examples(texts["mes_example"], texts["name"].strip())
    if examples:
        document["examples"] = [{"user": u, "assistant": a} for u, a in examples]
    elif dialogue:
        document["example_dialogue"] = dialogue
    book = data.get("character_book")
    if book is not None:
        document["lorebook"] = _lorebook(book, filename, notes)
    extensions = data.get("extensions")
    if extensions is not None and not isinstance(extensions, Mapping):
        raise InputError(f"the card in {filename}: 'extensions' must be an object")
    metadata = {
        "spec": spec,
        "spec_version": str(data.get("spec_version") or ""),
        "name": texts["name"].strip(),
        "creator": texts["creator"],
        "character_version": texts["character_version"],
        "creator_notes": texts["creator_notes"],
        "tags": _strings(data, "tags", filename),
        "alternate_greetings": _strings(data, "alternate_greetings", filename),
        "extensions": dict(extensions or {}),
    }
    document["card"] = {key: value for key, value in metadata.items() if value}
    return {key: value for key, value in document.items() if value != ""}, notes


_SPEAKER = re.compile(r"^\s*(\{\{user\}\}|\{\{char\}\}|[^:\n]{1,64}?)\s*:\s?(.*)$", re.IGNORECASE)


def _examples(text: str, card_name: str) -> tuple[list[tuple[str, str]], str]:
    """``mes_example`` as (user, assistant) pairs when every block reads as such exchanges,
    else ([], the text as written without its ``<START>`` lines)."""
    blocks = [b.strip() for b in re.split(r"<START>", text, flags=re.IGNORECASE)]
    blocks = [b for b in blocks if b]
    as_written = "\n\n".join(blocks)
    pairs: list[tuple[str, str]] = []
    for block in blocks:
        lines: list[list[str]] = []  # [speaker, text]
        for line in block.splitlines():
            match = _SPEAKER.match(line)
            speaker = match.group(1).strip().lower() if match else None
            if match and speaker in ("{{user}}", "{{char}}", card_name.lower()):
                role = "user" if speaker == "{{user}}" else "assistant"
                if lines and lines[-1][0] == role:
                    lines[-1][1] += "\n" + match.group(2)
                else:
                    lines.append([role, match.group(2)])
            elif lines:
                lines[-1][1] += "\n" + line
            elif line.strip():
                return [], as_written  # text before any speaker: not exchanges
        if not lines or lines[0][0] != "user" or len(lines) % 2:
            return [], as_written
        for index in range(0, len(lines), 2):
            pairs.append((lines[index][1].strip(), lines[index + 1][1].strip()))
    return pairs, as_written


def _lorebook(book: Any, filename: str, notes: list[str]) -> dict[str, Any]:
    if not isinstance(book, Mapping):
        raise InputError(f"the card in {filename}: 'character_book' must be an object")
    entries = book.get("entries")
    if not isinstance(entries, list):
        raise InputError(f"the card in {filename}: 'character_book' needs a list of 'entries'")
    kept: list[dict[str, Any]] = []
    regex = 0
    for number, entry in enumerate(entries, 1):
        where = f"the card in {filename}: lorebook entry {number}"
        if not isinstance(entry, Mapping):
            raise InputError(f"{where} must be an object")
        content = entry.get("content")
        if not isinstance(content, str):
            raise InputError(f"{where} needs a 'content' text")
        keys = _entry_strings(entry, "keys", where)
        secondary = _entry_strings(entry, "secondary_keys", where)
        flags = {}
        for key, default in (
            ("enabled", True),
            ("constant", False),
            ("selective", False),
            ("case_sensitive", False),
        ):
            value = entry.get(key)
            if value is None:
                value = default
            if not isinstance(value, bool):
                raise InputError(f"{where}: {key!r} must be true or false")
            flags[key] = value
        numbers = {
            key: _whole(entry.get(key), f"{where}: {key!r}") or 0 for key in ("insertion_order", "priority")
        }
        if entry.get("use_regex") is True:
            regex += 1
            continue
        if not keys and not flags["constant"]:
            continue  # nothing could ever trigger it
        item: dict[str, Any] = {"keys": keys, "content": _legacy(content)}
        if secondary:
            item["secondary_keys"] = secondary
        item |= {key: value for key, value in flags.items() if value != (key == "enabled")}
        item |= {key: value for key, value in numbers.items() if value}
        if isinstance(entry.get("name") or entry.get("comment"), str):
            item["name"] = entry.get("name") or entry.get("comment")
        kept.append(item)
    if regex:
        notes.append(
            f"{regex} lorebook entr{'y' if regex == 1 else 'ies'} with regular-expression keys left out"
        )
    lorebook: dict[str, Any] = {"entries": kept}
    for key in ("scan_depth", "token_budget"):
        value = _whole(book.get(key), f"the card in {filename}: character_book {key!r}")
        if value is not None:
            lorebook[key] = value
    return lorebook


def _whole(value: Any, what: str) -> int | None:
    """A number of the card as a whole number (JSON allows 1e400: infinite)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{what} must be a number")
    if abs(value) > 2**31:
        raise InputError(f"{what} is out of range")
    return int(value)


def _entry_strings(entry: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: {key!r} must be a list of texts")
    return [v for v in value if v.strip()]
