"""Prompt assembly within a token budget.

The prompt is: the persona (always whole) and what the bot knows about the user in the
system message, then as many recent turns as fit, newest kept first, then the user's
message. When turns must go, the oldest go first and the model is told how many were
left out; memories get at most a share of the budget, best first.

Token counts are estimated (about four characters a token for English, rounded up),
which is deliberately a little pessimistic so the real count stays under the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.events import ChatMessage, MemoryHit, Turn
from engine.persona import Persona
from engine.ports import UserProfile
from engine.relationship import RelationshipProfile
from engine.relationship import describe as describe_relationship

CHARS_PER_TOKEN = 3.5
PER_MESSAGE_OVERHEAD = 4


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


@dataclass(frozen=True, slots=True)
class PromptBudget:
    total_tokens: int = 2048
    reply_tokens: int = 256
    memory_share: float = 0.25

    @property
    def input_tokens(self) -> int:
        return max(self.total_tokens - self.reply_tokens, 64)


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: tuple[ChatMessage, ...]
    tokens: int
    turns_included: int
    turns_dropped: int
    memories_included: tuple[MemoryHit, ...]


def _user_section(
    profile: UserProfile | None,
    user_name: str,
    emotion: str | None,
    relationship: RelationshipProfile | None = None,
) -> str:
    preferred = (profile.preferred_name if profile else None) or (
        relationship.preferred_name if relationship else None
    )
    name = preferred or user_name
    lines = [f"You are talking with {name}."]
    if preferred and preferred != user_name:
        lines[0] = f"You are talking with {user_name}, who likes to be called {preferred}."
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


def _dropped_note(count: int) -> str:
    return f"\n\n({count} earlier message{'s' if count != 1 else ''} of this conversation not shown.)"


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
) -> Prompt:
    """Assemble the chat messages for one reply. ``turns`` are oldest first; ``memories`` best first."""
    system = persona.system_text() + "\n\n" + _user_section(profile, user_name, emotion, relationship)
    used = estimate_tokens(system) + PER_MESSAGE_OVERHEAD
    remaining = budget.input_tokens - used

    current = f"{user_name}: {user_message}" if group_chat else user_message
    current_tokens = estimate_tokens(current) + PER_MESSAGE_OVERHEAD
    if current_tokens > remaining // 2 and remaining > 0:
        # A message too long for the budget is shortened in the prompt only; it is stored whole.
        current = _truncate_to(current, remaining // 2)
        current_tokens = estimate_tokens(current) + PER_MESSAGE_OVERHEAD
    remaining -= current_tokens

    memory_lines: list[str] = []
    included: list[MemoryHit] = []
    memory_room = int(max(remaining, 0) * budget.memory_share)
    header = "Things you remember about them (from earlier conversations):"
    if memories and memory_room > estimate_tokens(header):
        memory_room -= estimate_tokens(header)
        for hit in memories:
            line = f"- [{hit.created_at:%Y-%m-%d}] {hit.text}"
            cost = estimate_tokens(line)
            if cost > memory_room:
                continue
            memory_lines.append(line)
            included.append(hit)
            memory_room -= cost
    if memory_lines:
        block = "\n\n" + header + "\n" + "\n".join(memory_lines)
        system += block
        remaining -= estimate_tokens(block)

    texts = [
        f"{turn.user_name}: {turn.content}" if group_chat and turn.role == "user" else turn.content
        for turn in turns
    ]
    costs = [estimate_tokens(text) + PER_MESSAGE_OVERHEAD for text in texts]
    if sum(costs) > remaining:
        # Not everything fits: keep room for the note that says how much was left out.
        remaining -= estimate_tokens(_dropped_note(len(turns)))
    history: list[ChatMessage] = []
    dropped = 0
    for index in range(len(turns) - 1, -1, -1):
        if costs[index] > remaining:
            dropped = index + 1
            break
        history.append(ChatMessage(turns[index].role, texts[index]))
        remaining -= costs[index]
    history.reverse()
    if dropped:
        system += _dropped_note(dropped)

    messages = (ChatMessage("system", system), *history, ChatMessage("user", current))
    return Prompt(
        messages=messages,
        tokens=budget.input_tokens - remaining,
        turns_included=len(history),
        turns_dropped=dropped,
        memories_included=tuple(included),
    )
