"""A persona's lorebook: background entries put into the prompt when their keys come up.

A lorebook (a character card's ``character_book``) is a list of entries, each with keys and a
content. An entry is *triggered* when one of its keys appears in the text scanned: the user's
message and the last ``scan_depth`` turns before it. Keys match as whole words (``cat`` is not
found in ``category``), ignoring case unless the entry is case-sensitive. A ``selective`` entry
with ``secondary_keys`` also needs one of those; a ``constant`` entry is always triggered; a
disabled one never is.

The triggered entries go into the prompt's context message within the lorebook's room (see
``engine/prompt.py``): when they do not all fit, constant entries are kept first, then those of
higher ``priority``, then lower ``insertion_order``; the kept entries are then laid out by
``insertion_order``, lowest first (the order of the card spec).

Regular-expression keys (character card V3's ``use_regex``) are not supported: such entries are
left out when a card is imported (see ``engine/cards.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_SCAN_DEPTH = 4
"""Turns before the message that are scanned for keys, when the lorebook does not say."""


@dataclass(frozen=True, slots=True)
class LoreEntry:
    keys: tuple[str, ...]
    content: str
    secondary_keys: tuple[str, ...] = ()
    selective: bool = False
    """Also needs one of ``secondary_keys`` (when there are any)."""
    constant: bool = False
    """Always in the prompt (room allowing), keys or not."""
    enabled: bool = True
    case_sensitive: bool = False
    insertion_order: int = 0
    """Lower first in the prompt."""
    priority: int = 0
    """Higher kept first when the room runs out."""
    name: str = ""

    def triggered_by(self, text: str) -> bool:
        if not self.enabled or not self.content.strip():
            return False
        if self.constant:
            return True
        if not _any_key(self.keys, text, self.case_sensitive):
            return False
        if self.selective and self.secondary_keys:
            return _any_key(self.secondary_keys, text, self.case_sensitive)
        return True


@dataclass(frozen=True, slots=True)
class Lorebook:
    entries: tuple[LoreEntry, ...]
    scan_depth: int | None = None
    """Turns before the message scanned for keys; None: :data:`DEFAULT_SCAN_DEPTH`."""
    token_budget: int | None = None
    """Most tokens of entries in one prompt (the prompt's own share may be smaller)."""

    @property
    def active(self) -> bool:
        """Whether any entry could ever reach a prompt."""
        return any(e.enabled and e.content.strip() for e in self.entries)

    def scanned_text(self, message: str, recent: Sequence[str]) -> str:
        depth = DEFAULT_SCAN_DEPTH if self.scan_depth is None else self.scan_depth
        shown = list(recent[-depth:]) if depth > 0 else []
        return "\n".join([*shown, message])

    def select(self, text: str, room: int, cost: Callable[[LoreEntry], int]) -> list[LoreEntry]:
        """The entries triggered by ``text`` that fit ``room`` tokens (each costs ``cost``), in
        the order they go into the prompt."""
        triggered = [(i, e) for i, e in enumerate(self.entries) if e.triggered_by(text)]
        triggered.sort(
            key=lambda item: (not item[1].constant, -item[1].priority, item[1].insertion_order, item[0])
        )
        kept: list[tuple[int, LoreEntry]] = []
        for index, entry in triggered:
            price = cost(entry)
            if price > room:
                continue
            kept.append((index, entry))
            room -= price
        kept.sort(key=lambda item: (item[1].insertion_order, item[0]))
        return [entry for _, entry in kept]


def _any_key(keys: Iterable[str], text: str, case_sensitive: bool) -> bool:
    return any(_key_pattern(key, case_sensitive).search(text) for key in keys if key.strip())


@lru_cache(maxsize=4096)
def _key_pattern(key: str, case_sensitive: bool) -> re.Pattern[str]:
    key = key.strip()
    # Whole words: no word character right before or after the key (where the key itself
    # starts or ends with one; a key like "C++" or "#tag" matches at its symbols).
    before = r"(?<!\w)" if re.match(r"\w", key) else ""
    after = r"(?!\w)" if re.search(r"\w$", key) else ""
    return re.compile(before + re.escape(key) + after, 0 if case_sensitive else re.IGNORECASE)
