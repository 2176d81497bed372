"""The engine's ports: one Protocol per outside capability, and the records they carry.

Implementations live outside ``engine/`` (``storage/``, ``inference/``, ``voice/``, ``tools/``) and are
chosen by the composition root (``bot/app.py``). Every implementation has async
``start()`` and ``aclose()``; ``ping()`` raises :class:`engine.errors.BackendUnavailable`
when its service is down. Fakes for unit tests are in ``tests/fakes/ports.py``.

Scopes: every record belongs to a scope string and no query crosses scopes.
User scopes are ``UniversalMessage.user_key`` (``"discord:1234"``); guild settings use
``"guild:<platform>:<id>"``, channel settings ``"channel:<platform>:<id>"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

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
    search_context: str = ""
    """Words that help keyword search find the memory but are not part of it: when it was said
    and the turn it followed (see ``engine.memory.search_context``)."""


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """What the memory writer stores for a batch of turns, in one transaction
    (``ConversationStore.write_batch``)."""

    messages: Sequence[StoredMessage] = ()
    """Turns to store (the assistant's replies); an id already stored changes nothing."""
    memories: Sequence[MemoryRecord] = ()
    """New memories (``add_memories``' rules)."""
    used: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Owner user_key → ids of their memories shown to the model (``mark_memories_used``)."""
    used_at: datetime | None = None

    def __bool__(self) -> bool:
        return bool(self.messages or self.memories or any(self.used.values()))


@dataclass(frozen=True, slots=True)
class MemoryState:
    """A memory's care fields (``engine/memory_care.py``), as the store keeps them."""

    id: str
    user_key: str
    importance: float
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None
    use_count: int = 0
    mentions: int = 1
    superseded_by: str | None = None
    source_message_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConversationSpan:
    """One user's part of one conversation: its newest message before some instant."""

    user_key: str
    conversation_key: str
    newest: datetime


@dataclass(frozen=True, slots=True)
class MergedUser:
    """What ``ConversationStore.merge_users`` moved."""

    messages: int = 0
    memory_ids: tuple[str, ...] = ()
    settings: int = 0
    profile: bool = False
    """Whether source had a profile (merged into target's, or renamed to target)."""


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


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as offered to the model (``Tools.offered``): the name the model calls it by
    (letters, digits, ``_`` and ``-``), what it does, and the JSON Schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, JSONValue] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for: its id (to pair the result with it), the tool's name, and
    the arguments as the JSON text the model wrote (possibly malformed)."""

    id: str
    name: str
    arguments: str = "{}"


ToolOutcome = Literal["ok", "error", "timeout", "refused"]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a call gave back to the model: the tool's text, or what went wrong."""

    call: ToolCall
    content: str
    outcome: ToolOutcome = "ok"


@dataclass(frozen=True, slots=True)
class ToolRound:
    """One round of a reply's tool use, sent back to the model with the next request: the text
    the model wrote with its calls, and each call's result. Rounds belong to one request only:
    they are never stored, cached, or shown to another conversation."""

    text: str
    results: tuple[ToolResult, ...]


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


@runtime_checkable
class ToolCallingLLM(Protocol):
    """An LLM that can also call tools natively (OpenAI-compatible ``tools``, Ollama ``tools``).

    ``stream_with_tools`` streams the reply's text, and yields a :class:`ToolCall` for each
    tool the model asks for (all of them once the stream has ended: the caller runs them
    after it). ``rounds`` are the earlier tool rounds of this reply, sent after ``messages``.
    ``may_call=False``: the model must answer now, without calling the tools (the last
    request of a reply).
    """

    def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec],
        rounds: Sequence[ToolRound],
        max_tokens: int,
        temperature: float,
        may_call: bool = True,
    ) -> AsyncIterator[str | ToolCall]: ...


class Tools(Protocol):
    """Tools the owner configured (``tools/mcp.py``: tools of MCP servers).

    ``offered(allowed)`` is the specs of the tools that an allow-list names (a persona's
    ``tools``: ``server.tool`` or ``server.*``) and that are available now; ``call`` runs one
    of them by its offered name and returns its text, raising :class:`engine.errors.ToolError`
    (``ToolTimeout`` after ``timeout_s``) with a message fit for the model.
    """

    def offered(self, allowed: Sequence[str]) -> list[ToolSpec]: ...

    async def call(self, name: str, arguments: Mapping[str, JSONValue], *, timeout_s: float) -> str: ...

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


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

    async def write_batch(self, batch: WriteBatch) -> None:
        """Store a batch's messages, add its memories and mark its used memories, all in one
        transaction (the memory writer's group commit)."""
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

    # --- memory care (``engine/memory_care.py``); every call is scoped to ``user_key`` ---

    async def reinforce_memory(
        self,
        user_key: str,
        memory_id: str,
        *,
        source_message_id: str,
        at: datetime,
        importance_delta: float,
        max_importance: float = 1.0,
    ) -> MemoryState | None:
        """Importance up (capped), mentions up, the source added once; None if not the user's."""
        ...

    async def supersede_memory(
        self, user_key: str, memory_id: str, *, superseded_by: str, at: datetime
    ) -> bool:
        """Mark the user's memory as replaced by ``superseded_by``; False if not the user's."""
        ...

    async def mark_memories_used(self, user_key: str, ids: Sequence[str], *, at: datetime) -> int:
        """``use_count`` + 1 and ``last_used_at = at`` for the user's memories with these ids."""
        ...

    async def memory_states(self, user_key: str, ids: Sequence[str] | None = None) -> list[MemoryState]:
        """The care fields of the user's memories (all of them without ``ids``)."""
        ...

    async def stale_memories(
        self, *, idle_before: datetime, max_importance: float, max_mentions: int, after_id: str, limit: int
    ) -> list[MemoryState]:
        """Memories of any user not written or used since ``idle_before``, importance below
        ``max_importance``, mentioned at most ``max_mentions`` times, id > ``after_id``, by id."""
        ...

    async def conversation_spans(
        self, *, before: datetime, after: tuple[str, str] | None, limit: int
    ) -> list[ConversationSpan]:
        """Each (user_key, conversation_key) with messages older than ``before``, with the newest
        of them; ordered by that pair, pairs after ``after`` only, at most ``limit``."""
        ...

    async def conversation_messages(
        self, user_key: str, conversation_key: str, *, after: datetime | None, limit: int
    ) -> list[StoredMessage]:
        """The user's messages (and the replies to them) in a conversation created after
        ``after`` (all without it): the oldest ``limit``, oldest first."""
        ...

    async def get_setting(self, scope: str, key: str) -> JSONValue | None: ...

    async def set_setting(self, scope: str, key: str, value: JSONValue) -> None: ...

    async def delete_setting(self, scope: str, key: str) -> None: ...

    async def settings_with_key(
        self, key: str, *, after_scope: str = "", limit: int = 500
    ) -> list[tuple[str, JSONValue]]:
        """One page of ``(scope, value)`` of every scope that has setting ``key``: scopes after
        ``after_scope`` only, in scope order, at most ``limit`` (walk on from the last scope)."""
        ...

    async def forget_user(self, user_key: str) -> int:
        """Erase the user's profile, messages, memories and settings; returns rows removed."""
        ...

    async def merge_users(self, source: str, target: str) -> MergedUser:
        """Give everything of user ``source`` to user ``target``, in one transaction.

        Messages and memories change owner (ids, texts and care fields kept); the profiles
        combine (message counts summed, earliest first_seen, latest last_seen, target's display
        and preferred name, source's preferred name when target has none; source's profile is
        renamed when target has none) and source's profile is removed; settings scoped to
        source move to target, except keys target already has (target's kept, source's
        dropped). Merging a user with nothing left is a no-op.
        """
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

    async def update_metadata(self, scope: str, metadata: Mapping[str, Mapping[str, MetadataValue]]) -> None:
        """Merge new metadata into stored items (id → the keys to set), keeping their embeddings
        and texts: nothing is embedded again. Ids not stored in the scope are left out."""
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


class ConversationLocks(Protocol):
    """One message of a conversation handled at a time, by one process at a time.

    ``async with locks.hold(conversation_key):`` waits its turn; within a process, waiters of a
    key are served in arrival order. Waiting longer than the implementation's limit raises
    :class:`engine.errors.ConversationBusy`.
    """

    def hold(self, conversation_key: str) -> AbstractAsyncContextManager[None]: ...

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


JobT = TypeVar("JobT")


class WorkQueue(Protocol[JobT]):
    """A background worker's queue, with the part of ``asyncio.Queue``'s interface it uses
    (``asyncio.Queue`` itself is the in-process implementation).

    ``put`` waits while the queue is full; ``get`` waits for a job; ``get_nowait`` takes one more
    job already at hand (``asyncio.QueueEmpty`` when there is none, as ``empty()`` says);
    ``task_done`` marks the oldest job taken and not yet done as done; ``join`` waits until every
    job put here has been done; ``qsize`` counts the jobs put here and not yet done.

    A shared implementation (``storage.cache.jobs.RedisWorkQueue``) lets several processes take
    jobs from one queue, and keeps a job until it is done: a job taken by a process that dies
    is handed out again (at-least-once), so the work must be safe to repeat.
    """

    async def put(self, item: JobT) -> None: ...

    async def get(self) -> JobT: ...

    def get_nowait(self) -> JobT: ...

    def empty(self) -> bool: ...

    def task_done(self) -> None: ...

    async def join(self) -> None: ...

    def qsize(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DirectMessageSent:
    """Where a message the bot wrote first went: the private chat, and the first part's id."""

    channel_id: str
    message_id: str


@runtime_checkable
class DirectMessenger(Protocol):
    """A platform on which the bot can write first to a user, in their private chat with it
    (check-ins). ``user_id`` is the platform's own id of the user.

    Raises InputError when the platform refuses (the user blocked the bot, never opened a
    chat with it, or does not accept direct messages), BackendUnavailable when it is down.
    """

    async def direct_channel(self, user_id: str) -> str:
        """The id of the user's private chat with the bot, opened when there is none yet."""
        ...

    async def send_direct(self, user_id: str, text: str) -> DirectMessageSent:
        """Send ``text`` to the user's private chat (split as the platform needs)."""
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


class Metrics(Protocol):
    """What the engine reports about its work, for the process to export (``bot/metrics.py``).

    Every method is cheap and never raises; :class:`NoMetrics` is the default.
    """

    def message_handled(self, platform: str, kind: str) -> None:
        """One message answered (``kind``: answer, apology, rate_limited, ignored...)."""
        ...

    def reply_timed(self, platform: str, *, total_s: float, first_token_s: float | None) -> None:
        """How long a reply took in all, and until its first chunk (None: no chunk came)."""
        ...

    def llm_streamed(self, backend: str, *, chunks: int, approx_tokens: int) -> None:
        """A reply's text as streamed by ``backend``: its chunks and about how many tokens."""
        ...

    def tool_called(self, tool: str, outcome: ToolOutcome, *, duration_s: float) -> None:
        """One tool call the model asked for, and how it ended."""
        ...


class NoMetrics:
    """Metrics that go nowhere."""

    def message_handled(self, platform: str, kind: str) -> None:
        return None

    def reply_timed(self, platform: str, *, total_s: float, first_token_s: float | None) -> None:
        return None

    def llm_streamed(self, backend: str, *, chunks: int, approx_tokens: int) -> None:
        return None

    def tool_called(self, tool: str, outcome: ToolOutcome, *, duration_s: float) -> None:
        return None
