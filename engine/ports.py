"""The engine's ports: one Protocol per outside capability, and the records they carry.

Implementations live outside ``engine/`` (``storage/``, ``inference/``, ``voice/``) and are
chosen by the composition root (``bot/app.py``). Every implementation has async
``start()`` and ``aclose()``; ``ping()`` raises :class:`engine.errors.BackendUnavailable`
when its service is down. Fakes for unit tests are in ``engine/fakes.py``.

Scopes: every record belongs to a scope string and no query crosses scopes.
User scopes are ``UniversalMessage.user_key`` (``"discord:1234"``); guild settings use
``"guild:<platform>:<id>"``, channel settings ``"channel:<platform>:<id>"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from engine.events import ChatMessage, Role

Vector = Sequence[float]
JSONValue = Any
MetadataValue = str | int | float | bool


# --- records -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserProfile:
    user_key: str
    platform: str
    user_id: str
    display_name: str
    first_seen: datetime
    last_seen: datetime
    message_count: int = 0
    preferred_name: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One turn as persisted in the conversation store."""

    id: str
    conversation_key: str
    user_key: str
    role: Role
    content: str
    platform: str
    channel_id: str
    created_at: datetime
    user_name: str = ""
    guild_id: str | None = None
    thread_id: str | None = None
    platform_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """A long-term memory's metadata and provenance; its vector lives in the vector store."""

    id: str
    user_key: str
    text: str
    created_at: datetime
    kind: str = "message"
    importance: float = 0.5
    platform: str = ""
    channel_id: str = ""
    source_message_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VectorItem:
    id: str
    text: str
    embedding: Vector
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VectorHit:
    id: str
    text: str
    similarity: float
    """Cosine similarity in [-1, 1]; higher is closer."""
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


# --- ports ---------------------------------------------------------------------------


@runtime_checkable
class Lifecycle(Protocol):
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def ping(self) -> None: ...


class LLM(Protocol):
    """A chat model that streams text chunks."""

    @property
    def name(self) -> str: ...

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]: ...

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def ping(self) -> None: ...


class Embedder(Protocol):
    """Turns texts into unit-length vectors, batched, off the event loop."""

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[Vector]: ...

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


class ConversationStore(Protocol):
    """The primary database: users, messages, memory metadata, settings.

    Every datetime passed in or returned is timezone-aware UTC.
    """

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def ping(self) -> None: ...

    async def touch_user(
        self, user_key: str, *, platform: str, user_id: str, display_name: str, seen_at: datetime
    ) -> UserProfile:
        """Create the user or update name/last_seen, incrementing message_count."""
        ...

    async def get_user(self, user_key: str) -> UserProfile | None: ...

    async def set_preferred_name(self, user_key: str, name: str | None) -> bool:
        """Set (``None``: clear) what the user likes to be called; False when the user is unknown."""
        ...

    async def add_message(self, message: StoredMessage) -> None: ...

    async def recent_messages(self, conversation_key: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation, oldest first."""
        ...

    async def user_messages(self, user_key: str, limit: int = 1000) -> list[StoredMessage]:
        """The oldest ``limit`` messages written by, or replied to, this user; oldest first."""
        ...

    async def add_memories(self, memories: Sequence[MemoryRecord]) -> None:
        """Insert, or update text and metadata of the owner's existing ids (``created_at`` kept).

        An id already owned by another user is left untouched.
        """
        ...

    async def get_memories(self, user_key: str, ids: Sequence[str]) -> list[MemoryRecord]:
        """The user's memories with these ids, in the order of ``ids``; missing ids and ids of
        other users are left out."""
        ...

    async def list_memories(self, user_key: str, limit: int = 100, offset: int = 0) -> list[MemoryRecord]:
        """Newest first."""
        ...

    async def count_memories(self, user_key: str) -> int: ...

    async def delete_memories(self, user_key: str, ids: Sequence[str]) -> int: ...

    async def keyword_search(self, user_key: str, query: str, k: int) -> list[tuple[MemoryRecord, float]]:
        """The user's ``k`` best word matches for ``query``, best first (higher scores are better).

        The query is plain text: no search syntax in it is ever interpreted.
        """
        ...

    async def get_setting(self, scope: str, key: str) -> JSONValue | None: ...

    async def set_setting(self, scope: str, key: str, value: JSONValue) -> None: ...

    async def delete_setting(self, scope: str, key: str) -> None: ...

    async def forget_user(self, user_key: str) -> int:
        """Erase the user's profile, messages, memories and settings; returns rows removed."""
        ...


class VectorMemory(Protocol):
    """Embeddings of memories, partitioned by scope (one partition per user)."""

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def ping(self) -> None: ...

    async def add(self, scope: str, items: Sequence[VectorItem]) -> None:
        """Insert or replace items (by id) in the scope."""
        ...

    async def query(self, scope: str, embedding: Vector, k: int) -> list[VectorHit]:
        """The ``k`` nearest items of this scope only, closest first."""
        ...

    async def delete(self, scope: str, ids: Sequence[str]) -> None: ...

    async def drop_scope(self, scope: str) -> None: ...

    async def count(self, scope: str) -> int: ...


class Cache(Protocol):
    """Short-lived state: recent turns and rate-limit counters. Values are strings.

    Every ``ttl_s`` must be positive; a list read as a string (or the reverse) is a StorageError.
    """

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def ping(self) -> None: ...

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    async def delete(self, *keys: str) -> None: ...

    async def incr(self, key: str, ttl_s: float) -> int:
        """Add one to a counter; a new counter expires ``ttl_s`` after its first increment."""
        ...

    async def push(self, key: str, value: str, max_len: int, ttl_s: float | None = None) -> None:
        """Append to a list, keeping only its newest ``max_len`` (≥ 1) entries.

        With ``ttl_s`` the whole list expires that long after this push.
        """
        ...

    async def tail(self, key: str, n: int) -> list[str]:
        """The newest ``n`` entries of a list, oldest first."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; returns how many."""
        ...


@dataclass(frozen=True, slots=True)
class Transcript:
    """What speech-to-text heard: the text, its language (ISO 639-1, when known), and how
    long the audio was."""

    text: str
    language: str | None = None
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """Synthesised speech: a complete mono 16-bit PCM WAV file."""

    wav: bytes
    sample_rate: int
    duration_s: float


class SpeechToText(Protocol):
    """Transcribes one audio file (any common container; ``content_type`` is a hint).

    Raises InputError for audio that is empty, corrupt, truncated, too large or too long
    (with a message fit to show the user), BackendUnavailable when the service is down or busy.
    """

    @property
    def name(self) -> str: ...

    async def transcribe(self, audio: bytes, *, content_type: str = "") -> Transcript: ...

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


class TextToSpeech(Protocol):
    """Speaks text in a voice (a persona's ``voice``; None: the configured default).

    Raises InputError for empty or too long text, BackendUnavailable when no engine can speak.
    """

    @property
    def name(self) -> str: ...

    async def synthesize(self, text: str, *, voice: str | None = None) -> SpeechAudio: ...

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
