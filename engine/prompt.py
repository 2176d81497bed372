"""Prompt assembly within a token budget, laid out so that a model's prompt cache stays useful.

Layout, oldest first::

    system   the persona                          the same for every message it answers
    turns    the persona's first message, if any (compact: then its example exchanges)
    turns    the conversation's recent turns       the same as in the previous message's prompt
    system   this message's context                who is talking, what the bot remembers about
                                                   them, how they sound, turns left out
    user     the message

The context message also holds the persona's lorebook entries whose keys appear in the message
or the last turns (``engine/lorebook.py``), within their share of the budget, and, last, the
persona's post-history instructions. ``{{char}}`` and ``{{user}}`` in the persona's texts are
filled in with its display name and the user's name (in a group chat, the persona's part then
changes with the speaker).

Everything that changes from one message to the next is in the context message, after the
turns: the start of the prompt (persona and earlier turns) is the start of the previous
message's prompt, so a backend that keeps what it has read (llama.cpp in this process, a server
with prompt caching) does not read it again.

Turns: the bot's own older replies are shortened first (a reply older than the latest one
keeps at most ``old_reply_tokens``), so its rambling does not crowd out what the user said.
The first turn shown stays the same from one message to the next while the turns from it fit
the budget (``history_from``, kept per conversation by :class:`HistoryWindows`); when they no
longer fit, or that turn has left the recent turns, the start jumps forward so that about half
the room is used, and stays there again. So the shown history is read again about once every
few messages, not on every one. Turns left out are counted for the model (full style).

Styles:

- ``full``, for large models: the persona's whole text, the user's profile, the relationship,
  the emotion of the message and dated memories;
- ``compact``, for small models in this process: the persona's first sentence and a length rule,
  its examples as turns, at most a few recent turns and memories, the memories as a short list
  of what the user said.

Token counts are estimated (about 3.5 characters a token for English, rounded up), which is
deliberately a little pessimistic so the real count stays under the budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engine.events import ChatMessage, MemoryHit, Turn
from engine.lorebook import LoreEntry
from engine.memory import memory_text
from engine.persona import Persona, fill_macros
from engine.ports import UserProfile
from engine.relationship import RelationshipProfile
from engine.relationship import describe as describe_relationship

CHARS_PER_TOKEN = 3.5
PER_MESSAGE_OVERHEAD = 4

PromptStyle = Literal["compact", "full"]


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


@dataclass(frozen=True, slots=True)
class PromptBudget:
    total_tokens: int = 2048
    reply_tokens: int = 256
    memory_share: float = 0.25
    lore_share: float = 0.25
    """Most of the room left after the persona and the message that lorebook entries may take."""

    @property
    def input_tokens(self) -> int:
        return max(self.total_tokens - self.reply_tokens, 64)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What each style puts in the prompt."""

    max_turns: int | None
    """Most recent turns shown (None: as many as fit)."""
    old_reply_tokens: int
    """A bot reply older than the latest one is shortened to this."""
    latest_reply_tokens: int | None
    """The latest bot reply is shortened to this (None: kept whole)."""
    max_memories: int | None


_SHAPES: dict[PromptStyle, _Shape] = {
    "full": _Shape(max_turns=None, old_reply_tokens=150, latest_reply_tokens=None, max_memories=None),
    "compact": _Shape(max_turns=10, old_reply_tokens=40, latest_reply_tokens=100, max_memories=4),
}

COMPACT_LENGTH_RULE = "Reply in one to three short sentences, about what the user just said."
LONG_REPLY_NOTE = "They asked for more: a longer answer is fine this time."
LORE_HEADER = "What you know that matters here:"


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: tuple[ChatMessage, ...]
    tokens: int
    turns_included: int
    turns_dropped: int
    memories_included: tuple[MemoryHit, ...]
    lore_included: tuple[LoreEntry, ...] = ()
    """The lorebook entries in the context message, in their order there."""
    first_turn: Turn | None = None
    """The oldest turn shown: where the next message's history starts if it still fits."""
    stop: tuple[str, ...] = ()
    """Text that ends the reply where the model starts writing someone's next line."""

    @property
    def system_text(self) -> str:
        """Every system message of the prompt, joined (persona first, context last)."""
        return "\n\n".join(m.content for m in self.messages if m.role == "system")


class HistoryWindows:
    """The first turn shown of each recent conversation (see the module docstring); the least
    recently used conversations are forgotten past ``size``."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._first: OrderedDict[str, Turn] = OrderedDict()

    def get(self, conversation_key: str) -> Turn | None:
        turn = self._first.get(conversation_key)
        if turn is not None:
            self._first.move_to_end(conversation_key)
        return turn

    def put(self, conversation_key: str, turn: Turn | None) -> None:
        if turn is None:
            self._first.pop(conversation_key, None)
            return
        self._first[conversation_key] = turn
        self._first.move_to_end(conversation_key)
        while len(self._first) > self._size:
            self._first.popitem(last=False)


def stop_sequences(user_name: str, turns: Sequence[Turn]) -> tuple[str, ...]:
    """Line starts that mean the model is writing a user's next line, not its reply."""
    names = [user_name, *(t.user_name for t in reversed(turns) if t.role == "user")]
    stops = ["\nUser:", "\nuser:"]
    for name in names:
        stop = f"\n{name.strip()}:"
        if name.strip() and stop not in stops and len(stops) < 8:
            stops.append(stop)
    return tuple(stops)


def _user_section(
    profile: UserProfile | None,
    user_name: str,
    emotion: str | None,
    relationship: RelationshipProfile | None,
    *,
    style: PromptStyle,
) -> str:
    preferred = (profile.preferred_name if profile else None) or (
        relationship.preferred_name if relationship else None
    )
    name = preferred or user_name
    lines = [f"You are talking with {name}."]
    if preferred and preferred != user_name:
        lines[0] = f"You are talking with {user_name}, who likes to be called {preferred}."
    if style == "compact":
        return lines[0]
    if profile is not None and profile.message_count > 1:
        lines.append(
            f"They have sent you {profile.message_count} messages since {profile.first_seen:%Y-%m-%d}."
        )
    if relationship is not None:
        lines.append(describe_relationship(relationship))
    if emotion and emotion != "neutral":
        lines.append(f"Their latest message sounds like {emotion}.")
    return " ".join(lines)


def _truncate_to(text: str, tokens: int) -> str:
    limit = max(int(tokens * CHARS_PER_TOKEN) - 1, 0)
    if len(text) <= limit:
        return text
    keep = max(limit - 20, 0)
    head, tail = keep * 2 // 3, keep // 3
    return f"{text[:head]} [...] {text[len(text) - tail :]}" if tail else text[:head]


def _shorten_reply(text: str, tokens: int) -> str:
    """A bot reply cut to its first sentences within ``tokens`` (at least its start)."""
    limit = max(int(tokens * CHARS_PER_TOKEN) - 1, 0)
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "), cut.rfind("\n"))
    if end >= limit // 3:
        return cut[: end + 1].rstrip()
    return cut.rstrip() + "..."


def _dropped_note(count: int) -> str:
    return f"({count} earlier message{'s' if count != 1 else ''} of this conversation not shown.)"


def _memory_line(hit: MemoryHit, user_name: str, style: PromptStyle) -> str:
    if style == "full":
        return f"- [{hit.created_at:%Y-%m-%d}] {hit.text}"
    text = hit.text.strip()
    prefix = f"{user_name}: "
    return f"- {text[len(prefix) :] if text.startswith(prefix) else text}"


def _memory_header(user_name: str, style: PromptStyle) -> str:
    if style == "full":
        return "Things you remember about them (from earlier conversations):"
    return f"What {user_name} told you before:"


def _history_start(
    turns: Sequence[Turn],
    costs: Sequence[int],
    room: int,
    max_turns: int | None,
    history_from: Turn | None,
) -> int:
    """Index of the first turn shown (``len(turns)``: none)."""
    count = len(turns)
    suffix = [0] * (count + 1)
    for index in range(count - 1, -1, -1):
        suffix[index] = suffix[index + 1] + costs[index]

    def earliest(room: int, most: int | None) -> int:
        start = next((i for i in range(count + 1) if suffix[i] <= room), count)
        if most is not None:
            start = max(start, count - most)
        if start < count and turns[start].role == "assistant" and start + 1 < count:
            start += 1  # the history starts with something the user said
        return start

    if history_from is None:
        return earliest(room, max_turns)
    previous = next((i for i, turn in enumerate(turns) if turn == history_from), None)
    within_turns = previous is not None and (max_turns is None or count - previous <= max_turns)
    if previous is not None and within_turns and suffix[previous] <= room:
        return previous
    half = None if max_turns is None else max(max_turns // 2, 1)
    if previous is None and max_turns is None:
        half = max(count // 2, 1)  # the start left the recent turns: keep half of them
    return earliest(max(room // 2, 0), half)


def build_prompt(
    *,
    persona: Persona,
    user_message: str,
    user_name: str,
    turns: Sequence[Turn],
    memories: Sequence[MemoryHit],
    profile: UserProfile | None,
    budget: PromptBudget,
    emotion: str | None = None,
    group_chat: bool = False,
    relationship: RelationshipProfile | None = None,
    style: PromptStyle = "full",
    history_from: Turn | None = None,
    long_reply: bool = False,
) -> Prompt:
    """Assemble the chat messages for one reply. ``turns`` are oldest first; ``memories`` best
    first; ``history_from``: the first turn shown in this conversation's previous prompt;
    ``long_reply``: the user asked for a longer answer than usual."""
    shape = _SHAPES[style]

    def fill(text: str) -> str:
        return fill_macros(text, char=persona.speaker, user=user_name)

    head: list[ChatMessage] = []
    if style == "compact":
        head.append(ChatMessage("system", fill(f"{persona.compact_text()} {COMPACT_LENGTH_RULE}")))
    else:
        head.append(ChatMessage("system", fill(persona.system_text())))
    if persona.first_message.strip():
        head.append(ChatMessage("assistant", fill(persona.first_message.strip())))
    if style == "compact":
        for said, answered in persona.examples[:2]:
            head += [ChatMessage("user", fill(said)), ChatMessage("assistant", fill(answered))]
    remaining = budget.input_tokens - sum(estimate_tokens(m.content) + PER_MESSAGE_OVERHEAD for m in head)

    current = f"{user_name}: {user_message}" if group_chat else user_message
    current_tokens = estimate_tokens(current) + PER_MESSAGE_OVERHEAD
    if current_tokens > remaining // 2 and remaining > 0:
        # A message too long for the budget is shortened in the prompt only; it is stored whole.
        current = _truncate_to(current, remaining // 2)
        current_tokens = estimate_tokens(current) + PER_MESSAGE_OVERHEAD
    remaining -= current_tokens

    # The context message: its parts are joined by blank lines (2 characters, counted as 1 token).
    context = [_user_section(profile, user_name, emotion, relationship, style=style)]
    if long_reply:
        context.append(LONG_REPLY_NOTE)
    after = fill(persona.post_history_instructions.strip())  # the context message's last part
    remaining -= sum(estimate_tokens(part) + 1 for part in [*context, after] if part) + PER_MESSAGE_OVERHEAD

    # The lorebook's room is set aside whether or not entries come up (so that the turns get the
    # same room from one message to the next); what they leave goes to the memories.
    book = persona.lorebook
    lore_room = 0
    if book is not None and book.active and remaining > 0:
        lore_room = int(remaining * budget.lore_share)
        if book.token_budget is not None:
            lore_room = min(lore_room, book.token_budget)
        remaining -= lore_room

    latest_reply = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].role == "assistant"), None)
    texts: list[str] = []
    for index, turn in enumerate(turns):
        if turn.role == "user":
            texts.append(f"{turn.user_name}: {turn.content}" if group_chat else turn.content)
            continue
        limit = shape.latest_reply_tokens if index == latest_reply else shape.old_reply_tokens
        texts.append(turn.content if limit is None else _shorten_reply(turn.content, limit))
    costs = [estimate_tokens(text) + PER_MESSAGE_OVERHEAD for text in texts]
    if style == "full" and turns:
        # Some may be left out: keep room for the note that says how many.
        remaining -= estimate_tokens(_dropped_note(len(turns))) + 1
    # Memories get at most their share; the turns get the rest (the same room from one message
    # to the next, so that the history's start can stay).
    memory_room = int(max(remaining, 0) * budget.memory_share) if memories else 0
    start = _history_start(turns, costs, max(remaining - memory_room, 0), shape.max_turns, history_from)
    history = [ChatMessage(turns[i].role, texts[i]) for i in range(start, len(turns))]
    remaining -= sum(costs[start:])

    lore: list[LoreEntry] = []
    if book is not None and lore_room > estimate_tokens(LORE_HEADER) + 1:
        scanned = book.scanned_text(user_message, [t.content for t in turns])
        lore = book.select(
            scanned,
            lore_room - estimate_tokens(LORE_HEADER) - 1,
            lambda entry: estimate_tokens(fill(entry.content.strip())) + 1,
        )
    lore_used = 0
    if lore:
        block = LORE_HEADER + "\n" + "\n".join(fill(entry.content.strip()) for entry in lore)
        context.append(block)
        lore_used = estimate_tokens(block) + 1
    remaining += lore_room - lore_used
    if memories:
        memory_room += lore_room - lore_used

    # A memory that is one of the turns shown would only say it twice.
    shown = {memory_text(t.user_name, t.content) for t in turns[start:] if t.role == "user"}
    memory_lines: list[str] = []
    included: list[MemoryHit] = []
    header = _memory_header(user_name, style)
    if memories and memory_room > estimate_tokens(header) + 1:
        memory_room -= estimate_tokens(header) + 1  # each line and the block: +1 for its separator
        for hit in memories:
            if shape.max_memories is not None and len(memory_lines) >= shape.max_memories:
                break
            if hit.text.strip() in shown:
                included.append(hit)  # in the prompt all the same, as the turn
                continue
            line = _memory_line(hit, user_name, style)
            cost = estimate_tokens(line) + 1
            if cost > memory_room:
                continue
            memory_lines.append(line)
            included.append(hit)
            memory_room -= cost
    if memory_lines:
        block = header + "\n" + "\n".join(memory_lines)
        context.append(block)
        remaining -= estimate_tokens(block) + 1
    if start and style == "full":
        context.append(_dropped_note(start))
    if after:
        context.append(after)

    messages = (
        *head,
        *history,
        ChatMessage("system", "\n\n".join(context)),
        ChatMessage("user", current),
    )
    return Prompt(
        messages=messages,
        tokens=budget.input_tokens - remaining,
        turns_included=len(history),
        turns_dropped=start,
        memories_included=tuple(included),
        lore_included=tuple(lore),
        first_turn=turns[start] if start < len(turns) else None,
        stop=stop_sequences(user_name, turns),
    )
