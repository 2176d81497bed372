"""The message splitter, at Discord's 2000 characters: nothing lost, nothing over, fences balanced.

"Gives back the text" is checked exactly as the splitter's docstring defines it: there
must be cut positions ``0 = c_0 < ... < c_n = len(text)`` such that each part is
``reopen(c_i) + text[c_i:c_{i+1}] + close(c_{i+1})``, where reopen/close are the fence
lines added around a cut inside a code block. The code blocks are found here by a small
parser of our own, not by the splitter's.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.textsplit import split_message
from bot.discord.config import DISCORD_LIMIT

FENCE_LINE = re.compile(r"```[^\s`]{0,32}[ \t]{0,8}")


def open_intervals(text: str) -> list[tuple[int, int, str]]:
    """(first open position, last open position, opening line) of each code block."""
    intervals = []
    offset = 0
    opening: tuple[int, str] | None = None
    for line in text.split("\n"):
        end = offset + len(line)
        if FENCE_LINE.fullmatch(line):
            if opening is None:
                opening = (end, line)
            else:
                intervals.append((opening[0], offset, opening[1]))
                opening = None
        offset = end + 1
    if opening is not None:
        intervals.append((opening[0], len(text), opening[1]))
    return intervals


def added_lines(text: str, c: int) -> tuple[str, str]:
    """What the definition adds before a part starting at ``c`` and after one ending there."""
    for first, last, line in open_intervals(text):
        if first <= c <= last:
            close = "```" if c > 0 and text[c - 1] == "\n" else "\n```"
            return line + "\n", close
    return "", ""


def gives_back(parts: list[str], text: str) -> bool:
    """Whether cut positions exist that make every part reopen + slice + close."""

    def walk(i: int, c: int) -> bool:
        if i == len(parts):
            return c == len(text)
        part = parts[i]
        head, _ = added_lines(text, c)
        if not part.startswith(head):
            return False
        rest = part[len(head) :]
        for tail in ("", "```", "\n```"):
            if tail and not rest.endswith(tail):
                continue
            body = rest[: len(rest) - len(tail)]
            end = c + len(body)
            if (
                body
                and text.startswith(body, c)
                and added_lines(text, end)[1] == tail
                and (i < len(parts) - 1) == (end < len(text))
                and walk(i + 1, end)
            ):
                return True
        return False

    return walk(0, 0)


def fence_count(part: str) -> int:
    return sum(1 for line in part.split("\n") if FENCE_LINE.fullmatch(line))


def check(text: str, limit: int) -> list[str]:
    parts = split_message(text, limit)
    assert all(len(p) <= limit for p in parts), [len(p) for p in parts]
    assert all(fence_count(p) % 2 == 0 for p in parts)
    assert gives_back(parts, text)
    return parts


# --- examples ---------------------------------------------------------------------------


def test_short_text_is_one_part() -> None:
    assert split_message("hello", DISCORD_LIMIT) == ["hello"]
    assert split_message("", DISCORD_LIMIT) == []


def test_splits_at_paragraphs() -> None:
    paragraphs = [("word " * 150).strip() + "." for _ in range(4)]
    text = "\n\n".join(paragraphs)
    parts = check(text, DISCORD_LIMIT)
    assert len(parts) == 2
    assert parts[0].endswith("\n\n")
    assert parts[1].startswith("word")


def test_prefers_sentence_end_to_a_space() -> None:
    sentence = "This is a sentence that goes on for a while. "
    text = sentence * 60
    parts = check(text, DISCORD_LIMIT)
    assert all(p.endswith(". ") for p in parts[:-1])


def test_code_block_closed_and_reopened_with_language() -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(120))
    text = f"Here is the code:\n\n```python\n{code}\n```\n\nThat's it."
    parts = check(text, DISCORD_LIMIT)
    assert len(parts) >= 3
    # The block is closed at the end of each part and reopened as python in the next one.
    assert parts[0].startswith("Here is the code:\n\n```python\n")
    assert parts[0].endswith("\n```")
    for part in parts[1:-1]:
        assert part.startswith("```python\n")
        assert part.endswith("\n```")
        assert "\n\n```" not in part  # cut at a line break: no blank line added inside the code
    assert parts[-1].startswith("```python\n")
    assert parts[-1].endswith("That's it.")


def test_5000_characters_with_code_every_character_present() -> None:
    prose = "The quick brown fox jumps over the lazy dog. " * 40
    code = "\n".join(f"let x{i} = {i} * 2;" for i in range(110))
    text = f"{prose}\n\n```rust\n{code}\n```\n\n{prose}"[:5000]
    assert len(text) == 5000
    parts = check(text, DISCORD_LIMIT)
    assert len(parts) >= 3


def test_unclosed_block_at_the_end_is_closed() -> None:
    assert split_message("look:\n```js\nlet a = 1;", DISCORD_LIMIT) == ["look:\n```js\nlet a = 1;\n```"]
    assert split_message("look:\n```js\n", DISCORD_LIMIT) == ["look:\n```js\n```"]
    check("x\n```js", 300)


def test_one_long_word_is_cut_hard() -> None:
    text = "a" * 4500
    parts = check(text, DISCORD_LIMIT)
    assert "".join(parts) == text


def test_fence_like_line_in_a_long_line_is_not_broken() -> None:
    text = ("x" * 180) + "\n" + "```" + "y" * 400 + "\n```py\nprint(1)\n" * 30
    check(text, 200)


def test_limit_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least"):
        split_message("text", 10)


# --- properties -------------------------------------------------------------------------

WORDS = st.text(alphabet=st.sampled_from("abcdefghij é😀`.!?,"), min_size=1, max_size=14)
SENTENCE = st.lists(WORDS, min_size=1, max_size=30).map(lambda ws: " ".join(ws) + ".")
PARAGRAPH = st.lists(SENTENCE, min_size=1, max_size=12).map(" ".join)
CODE_LINE = st.text(alphabet=st.sampled_from("abc(){}=;:# `\t"), max_size=90)
LANGUAGE = st.sampled_from(["", "python", "js", "c++", "rust  ", "x" * 32])


@st.composite
def code_block(draw: st.DrawFn) -> str:
    lines = draw(st.lists(CODE_LINE, max_size=60))
    closed = draw(st.booleans())
    body = "\n".join(["```" + draw(LANGUAGE), *lines])
    return body + ("\n```" if closed else "")


@st.composite
def documents(draw: st.DrawFn) -> str:
    blocks = draw(
        st.lists(
            st.one_of(PARAGRAPH, code_block(), st.text(max_size=300), st.just("```")), min_size=1, max_size=12
        )
    )
    separators = draw(st.lists(st.sampled_from(["\n\n", "\n", " ", "", "\n\n\n"]), min_size=len(blocks)))
    return "".join(b + s for b, s in zip(blocks, separators, strict=False))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=documents(), limit=st.integers(min_value=200, max_value=DISCORD_LIMIT))
def test_property_parts_give_back_the_text(text: str, limit: int) -> None:
    check(text, limit)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab `\n.py"), max_size=3000), limit=st.integers(200, 400))
def test_property_backtick_soup(text: str, limit: int) -> None:
    check(text, limit)


@settings(max_examples=100, deadline=None)
@given(text=documents())
def test_property_growing_text_keeps_finished_parts(text: str) -> None:
    """While a reply streams, every part but the last is final once a later part exists."""
    full = split_message(text, 300)
    for n in range(0, len(text), max(1, len(text) // 7)):
        prefix_parts = split_message(text[:n], 300)
        for i, part in enumerate(prefix_parts[:-1]):
            assert part == full[i]
