"""Character card files as the tools that make them write them, for the import tests.

JSON cards are the V2 and V3 shapes of the specs; PNG cards are real PNG images made with
Pillow, the card base64-encoded in a ``tEXt`` chunk (``chara`` for V2, ``ccv3`` for V3), as
SillyTavern writes them.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

Json = dict[str, Any]

ELDORIA = "Eldoria is a hidden forest kingdom ruled by the Moon Council; its gates open only at dusk."
MOONSTONE = "The Moonstone heals wounds but costs its bearer one memory each time it is used."
THE_COUNCIL = "The Moon Council are seven elders who never leave the Silver Grove."


def v2_card(name: str = "Seraphina", **data: Any) -> Json:
    """A Character Card V2 with every field the spec names, and a lorebook of three entries."""
    card_data: Json = {
        "name": name,
        "description": "{{char}} is a gentle forest guardian with silver hair. She tends the glade.",
        "personality": "caring, protective, a little mischievous",
        "scenario": "{{user}} wakes up wounded in {{char}}'s glade after a storm.",
        "first_mes": "*{{char}} kneels beside you.* Easy now, {{user}}. You're safe in my glade.",
        "mes_example": (
            "<START>\n{{user}}: Who are you?\n{{char}}: I am {{char}}, keeper of this forest.\n"
            "<START>\n{{user}}: Where am I?\n{{char}}: In my glade. Rest a while."
        ),
        "creator_notes": "Best with a warm, slow roleplay.",
        "system_prompt": "{{original}} Never speak for {{user}}.",
        "post_history_instructions": "Stay in character as {{char}}; describe actions in asterisks.",
        "alternate_greetings": ["*{{char}} hums a tune.* Oh! A visitor."],
        "character_book": {
            "name": "Forest lore",
            "scan_depth": 2,
            "token_budget": 400,
            "recursive_scanning": False,
            "extensions": {},
            "entries": [
                {
                    "keys": ["Eldoria", "forest kingdom"],
                    "content": ELDORIA,
                    "extensions": {},
                    "enabled": True,
                    "insertion_order": 20,
                    "priority": 5,
                    "id": 1,
                    "comment": "the kingdom",
                },
                {
                    "keys": ["moonstone"],
                    "content": MOONSTONE,
                    "extensions": {},
                    "enabled": True,
                    "insertion_order": 10,
                    "priority": 1,
                    "id": 2,
                },
                {
                    "keys": ["council"],
                    "secondary_keys": ["moon"],
                    "selective": True,
                    "content": THE_COUNCIL,
                    "extensions": {},
                    "enabled": True,
                    "insertion_order": 30,
                    "id": 3,
                },
            ],
        },
        "tags": ["fantasy", "guardian"],
        "creator": "tester",
        "character_version": "1.2",
        "extensions": {
            "talkativeness": "0.5",
            "world": "Eldoria",
            "depth_prompt": {"prompt": "", "depth": 4},
        },
    }
    card_data.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": card_data}


def v3_card(name: str = "Seraphina", **data: Any) -> Json:
    """The same character as a Character Card V3 (nickname, assets, regex entries and all)."""
    card = copy.deepcopy(v2_card(name, **data))
    card["spec"], card["spec_version"] = "chara_card_v3", "3.0"
    card_data = card["data"]
    card_data.setdefault("nickname", "Sera")
    card_data["group_only_greetings"] = []
    card_data["assets"] = [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]
    card_data["creation_date"] = 1735689600
    card_data["modification_date"] = 1735689600
    for entry in card_data["character_book"]["entries"]:
        entry["use_regex"] = False
    card_data["character_book"]["entries"].append(
        {
            "keys": ["/dragons?/i"],
            "content": "Dragons sleep under the hills.",
            "enabled": True,
            "insertion_order": 40,
            "use_regex": True,
            "extensions": {},
        }
    )
    return card


def encoded(card: Json) -> str:
    return base64.b64encode(json.dumps(card).encode("utf-8")).decode("ascii")


def png_card(*chunks: tuple[str, str], size: tuple[int, int] = (64, 96)) -> bytes:
    """A real PNG image with the given ``(keyword, text)`` tEXt chunks."""
    info = PngInfo()
    for keyword, text in chunks:
        info.add_text(keyword, text)
    out = io.BytesIO()
    Image.new("RGB", size, (90, 140, 110)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def png_v2(card: Json | None = None) -> bytes:
    return png_card(("chara", encoded(card or v2_card())))


def png_v3(card: Json | None = None, *, with_v2: Json | None = None) -> bytes:
    """A V3 PNG; like SillyTavern's, it may also carry a V2 ``chara`` chunk (``with_v2``)."""
    chunks = [("ccv3", encoded(card or v3_card()))]
    if with_v2 is not None:
        chunks.insert(0, ("chara", encoded(with_v2)))
    return png_card(*chunks)


def json_bytes(card: Json) -> bytes:
    return json.dumps(card, indent=2).encode("utf-8")
