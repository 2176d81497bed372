"""Split a reply into platform messages of bounded size, losing nothing.

``split_message(text, limit)`` cuts by code points; ``split_text(text, limit, measure=...)``
for platforms that count otherwise (Telegram: UTF-16 units, :func:`utf16_len`; Slack: the
escaped text): a part that measures over ``limit`` is split again, finer, until it fits.

Cuts are made at the best boundary in the second half of each message's window, in
this order of preference: before or after a code block, a paragraph break, a line
break, the end of a sentence, any whitespace; a hard cut only when none exists.

Code fences
    A *fence line* is a whole line matching :data:`FENCE` (three backticks, an optional
    language of up to 32 characters, optional trailing blanks); fence lines toggle
    between outside and inside a code block. A cut inside a code block closes the block
    at the end of the part and reopens it, with its opening line (language included), at
    the start of the next part. A block left open at the end of the text is closed too,
    so every part has balanced fences (also while a reply is still streaming).

What "losing nothing" means exactly
    For the parts ``p_0 .. p_{n-1}`` of ``text`` there are cut positions
    ``0 = c_0 < c_1 < ... < c_n = len(text)`` with::

        p_i = reopen(c_i) + text[c_i:c_{i+1}] + close(c_{i+1})

    where, when a code block is open at position ``c`` of ``text``, ``reopen(c)`` is its
    opening line plus ``"\\n"`` and ``close(c)`` is ``"```"`` preceded by ``"\\n"`` unless
    ``text[c-1]`` already is one; both are ``""`` otherwise. A block is open at ``c`` from
    the end of its opening line's text up to the start of its closing line. Removing those
    added fence lines and concatenating gives back ``text`` exactly.

Lengths are counted in code points (``len``). Platforms trim leading and trailing
whitespace of a message; renderers skip parts that are only whitespace.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MIN_LIMIT = 200

FENCE = re.compile(r"```[^\s`]{0,32}[ \t]{0,8}")
"""A whole line that opens or closes a code block."""

_FENCE_LINE = re.compile(r"^```[^\s`]{0,32}[ \t]{0,8}$", re.MULTILINE)
_SENTENCE_END = re.compile("[.!?\u2026\u3002][\"'\u201d\u2019)\\]]*[ \t\n]")
_CLOSE = "```"


@dataclass(frozen=True, slots=True)
class _Block:
    line_start: int
    """Index of the first backtick of the opening fence line."""
    open_from: int
    """First position inside the block: the end of the opening line's text."""
    body_from: int
    """Just after the opening line's newline (``len(text)`` when there is none)."""
    close_start: int | None
    """Index of the closing fence line, or None when the block is never closed."""
    close_end: int | None
    """Just after the closing fence line (its newline included)."""
    opening: str


class _Fences:
    """The code blocks of a text and the fence lines that delimit them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.blocks: list[_Block] = []
        self.lines: list[tuple[int, int]] = []
        """Each fence line as (start, index of its newline or len(text))."""
        opening: re.Match[str] | None = None
        n = len(text)
        for match in _FENCE_LINE.finditer(text):
            start, end = match.span()
            self.lines.append((start, end))
            if opening is None:
                opening = match
                continue
            o_start, o_end = opening.span()
            self.blocks.append(
                _Block(o_start, o_end, min(o_end + 1, n), start, min(end + 1, n), opening.group())
            )
            opening = None
        if opening is not None:
            o_start, o_end = opening.span()
            self.blocks.append(_Block(o_start, o_end, min(o_end + 1, n), None, None, opening.group()))
        self._starts = [b.line_start for b in self.blocks]
        self._line_starts = [s for s, _ in self.lines]

    def open_block(self, c: int) -> _Block | None:
        """The block open at position ``c``, if any."""
        i = bisect.bisect_right(self._starts, c) - 1
        if i < 0:
            return None
        block = self.blocks[i]
        if c < block.open_from:
            return None
        # A cut between an opening line's text and its newline would add a blank line;
        # it is forbidden by ``allowed`` except at the very end of the text.
        if block.close_start is not None and c > block.close_start:
            return None
        return block

    def inside_fence_line(self, c: int) -> bool:
        """Whether ``c`` falls strictly inside a fence line (its newline counts as inside)."""
        i = bisect.bisect_right(self._line_starts, c - 1) - 1
        if i < 0:
            return False
        start, newline = self.lines[i]
        return start < c <= newline

    def reopen(self, c: int) -> str:
        block = self.open_block(c)
        return block.opening + "\n" if block else ""

    def close(self, c: int) -> str:
        if self.open_block(c) is None:
            return ""
        return _CLOSE if c > 0 and self.text[c - 1] == "\n" else "\n" + _CLOSE


def _line_bounds(text: str, c: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, c) + 1
    end = text.find("\n", c)
    return start, len(text) if end < 0 else end


class _Cutter:
    def __init__(self, text: str) -> None:
        self.text = text
        self.fences = _Fences(text)

    def allowed(self, c: int) -> bool:
        """A cut at ``c`` must not break a fence line nor create one out of a partial line."""
        text = self.text
        if c <= 0 or c >= len(text):
            return False
        if self.fences.inside_fence_line(c):
            return False
        start, end = _line_bounds(text, c)
        if start == c:
            return True
        # A partial line left at either side of a mid-line cut must not read as a fence.
        return not (FENCE.fullmatch(text, start, c) or FENCE.fullmatch(text, c, end))

    def choose(self, pos: int, hi: int) -> int:
        """The best cut in ``(pos, hi]``."""
        lo = pos + max(1, (hi - pos) // 2)
        for floor in (lo, pos + 1):
            for candidates in (self._blocks_and_paragraphs, self._lines, self._sentences, self._spaces):
                best = max((c for c in candidates(pos, hi) if c >= floor and self.allowed(c)), default=None)
                if best is not None:
                    return best
        c = hi
        while c > pos and not self.allowed(c):
            c -= 1
        if c > pos:
            return c
        c = hi + 1
        while c < len(self.text) and not self.allowed(c):  # pragma: no cover - needs a tiny limit
            c += 1
        return c

    def _blocks_and_paragraphs(self, pos: int, hi: int) -> list[int]:
        text, fences = self.text, self.fences
        found = [b.line_start for b in fences.blocks if pos < b.line_start <= hi]
        found += [b.close_end for b in fences.blocks if b.close_end is not None and pos < b.close_end <= hi]
        i = text.find("\n\n", pos, hi)
        while i >= 0:
            c = i + 2
            if c <= hi and fences.open_block(c) is None:
                found.append(c)
            i = text.find("\n\n", i + 1, hi)
        return found

    def _lines(self, pos: int, hi: int) -> list[int]:
        found = []
        i = self.text.find("\n", pos, hi)
        while i >= 0:
            found.append(i + 1)
            i = self.text.find("\n", i + 1, hi)
        return found

    def _sentences(self, pos: int, hi: int) -> list[int]:
        fences = self.fences
        return [
            m.end()
            for m in _SENTENCE_END.finditer(self.text, pos, hi + 1)
            if fences.open_block(m.end()) is None
        ]

    def _spaces(self, pos: int, hi: int) -> list[int]:
        text = self.text
        return [c for c in range(pos + 1, hi + 1) if text[c - 1] in " \t"]


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters (see the module docstring)."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}")
    if not text:
        return []
    cutter = _Cutter(text)
    fences = cutter.fences
    n = len(text)
    parts: list[str] = []
    pos = 0
    while True:
        head = fences.reopen(pos)
        if len(head) + (n - pos) + len(fences.close(n)) <= limit:
            parts.append(head + text[pos:] + fences.close(n))
            return parts
        # Room for the body: the opening line repeated, and a closing "\n```" kept in reserve.
        hi = min(n - 1, pos + limit - len(head) - len("\n" + _CLOSE))
        cut = cutter.choose(pos, hi)
        parts.append(head + text[pos:cut] + fences.close(cut))
        pos = cut


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: how Telegram counts message text."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int, *, measure: Callable[[str], int] = len) -> list[str]:
    """Parts of ``text`` whose ``measure`` is at most ``limit`` (``limit`` ≥ :data:`MIN_LIMIT`)."""
    return list(_fit(text, limit, limit, measure))


def _fit(text: str, size: int, budget: int, measure: Callable[[str], int]) -> Iterator[str]:
    for part in split_message(text, size):
        if measure(part) <= budget or size <= MIN_LIMIT:
            yield part
        else:
            yield from _fit(part, max(MIN_LIMIT, size // 2), budget, measure)
