"""Platform-neutral events: what adapters hand the engine and what it hands back.

All are frozen, slotted dataclasses; adapters build them from platform objects and
render them back. Nothing here knows about any platform.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal

Role = Literal["system", "user", "assistant"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with a message; the adapter knows how to fetch ``url``."""

    filename: str
    content_type: str
    url: str
    size: int = 0
    duration_secs: float | None = None
    is_voice_message: bool = False


@dataclass(frozen=True, slots=True)
class UniversalMessage:
    """One incoming message, from any platform."""

    content: str
    user_id: str
    user_name: str
    platform: str
    channel_id: str
    guild_id: str | None = None
    thread_id: str | None = None
    reply_to: str | None = None
    message_id: str = field(default_factory=new_id)
    attachments: tuple[Attachment, ...] = ()
    timestamp: datetime = field(default_factory=utcnow)
    is_bot: bool = False
    is_self: bool = False
    is_direct: bool = False
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def user_key(self) -> str:
        """The user's identity across the engine: the same person on two platforms is two keys."""
        return f"{self.platform}:{self.user_id}"

    @property
    def conversation_key(self) -> str:
        """One conversation per channel, and one per thread inside it."""
        key = f"{self.platform}:{self.channel_id}"
        return f"{key}:{self.thread_id}" if self.thread_id else key

    @property
    def guild_key(self) -> str | None:
        return f"{self.platform}:{self.guild_id}" if self.guild_id else None


class ReplyKind(enum.StrEnum):
    ANSWER = "answer"
    APOLOGY = "apology"
    RATE_LIMITED = "rate_limited"
    IGNORED = "ignored"
    TOO_LONG = "too_long"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a prompt sent to the LLM."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Turn:
    """One line of short-term context: who said what, and when."""

    role: Role
    content: str
    user_name: str
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A long-term memory recalled for a reply, with where it came from."""

    memory_id: str
    text: str
    score: float
    created_at: datetime
    platform: str = ""
    channel_id: str = ""
    source_message_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Timings:
    """Milliseconds spent in each stage of one reply."""

    context_ms: float = 0.0
    first_token_ms: float = 0.0
    llm_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class AIResponse:
    """The engine's complete answer to one message."""

    content: str
    kind: ReplyKind = ReplyKind.ANSWER
    persona: str = ""
    emotion: str | None = None
    memories_used: tuple[MemoryHit, ...] = ()
    timings: Timings = Timings()
    llm_backend: str = ""
    error: str | None = None
