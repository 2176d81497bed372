"""SpoolingConversationStore: the SQL store, with writes kept on local disk while it is down.

When a write (``add_message``, ``touch_user``, ``add_memories``, ``set_setting``, ...) meets
:class:`BackendUnavailable` — PostgreSQL stopped or unreachable, SQLite locked or its disk
full — it is appended to a spool file under ``DATA_DIR/spool`` instead: one JSON line per
write, flushed and fsynced before the call returns, so a crash loses nothing that was
acknowledged. While the spool holds anything, new writes join its end too, so the database
sees every write in the order it was made. A background task pings the database every
``replay_interval_s`` and, once it answers, writes the spooled entries in order, recording
after each one how far it got (a crash mid-replay repeats at most one entry). Replays are
idempotent where it matters: message and memory ids are unique (``ON CONFLICT``), settings
are upserts. The spool is also replayed at start-up, after a crash during an outage.

The spool is bounded (entries and bytes). Beyond the bound a new message (``touch_user``, a
user's ``add_message``) raises :class:`WriteRefused`: nothing is stored, and the engine tells the
user to try again later. Writes that follow from messages already accepted (replies, memories,
settings) may use up to twice the bound, so an answered message keeps its reply and memories.
An entry the database rejects for a reason other than being unreachable (a constraint it
cannot meet) is moved to ``store-spool.rejected.jsonl`` and replay goes on.

Reads go to the database. During an outage, the values this process last read or wrote
answer ``get_setting`` and ``get_user`` (a spooled setting is read back at once); other reads
raise BackendUnavailable, which the engine's reply path treats as "answer without it" (recent
turns come from the cache). Writes that need the database's answer (``reinforce_memory``,
``delete_memories``, ``forget_user``) first replay the spool, and raise BackendUnavailable
while they cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import BackendUnavailable, StorageError, WhisperEngineError, WriteRefused
from engine.ports import (
    ConversationSpan,
    JSONValue,
    MemoryRecord,
    MemoryState,
    MergedUser,
    StoredMessage,
    UserProfile,
    WriteBatch,
)
from storage.sql.store import SQLConversationStore
from storage.vector.outbox import OutboxEntry, OutboxOp

logger = logging.getLogger(__name__)

SPOOL_FILE = "store-spool.jsonl"
PROGRESS_FILE = "store-spool.done"
REJECTED_FILE = "store-spool.rejected.jsonl"
_PROGRESS_WIDTH = 20  # the replayed byte offset, fixed width, overwritten in place
_MEMO_SIZE = 4096

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled write: the store method, its arguments as JSON, and where its line ends."""

    op: str
    args: dict[str, Any]
    end: int


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteSpool:
    """An append-only JSON-lines file of writes waiting for the database.

    ``append`` returns once the line is on disk (fsync). A second small file holds the byte
    offset up to which entries have been replayed; when everything is, the spool is emptied.
    File work runs in a thread, one operation at a time.
    """

    def __init__(self, directory: Path, *, max_entries: int, max_bytes: int, service: str) -> None:
        self.directory = directory
        self.path = directory / SPOOL_FILE
        self.rejected_path = directory / REJECTED_FILE
        self._progress_path = directory / PROGRESS_FILE
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._service = service
        self.entries = 0
        """Entries waiting to be replayed."""
        self.bytes = 0
        self._done = 0
        self._size = 0
        self._file: Any = None
        self._progress_fd: int | None = None
        self._lock = asyncio.Lock()

    @property
    def empty(self) -> bool:
        return self.entries == 0

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = not self.path.exists()
        # the spool holds what users wrote: readable by this user only
        self._file = open(self.path, "ab", buffering=0, opener=_private)  # noqa: SIM115 - open until close()
        fd = os.open(self._progress_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._progress_fd = fd
        if created:
            _fsync_dir(self.directory)
        raw = os.pread(fd, _PROGRESS_WIDTH + 1, 0).strip()
        done = int(raw) if raw.isdigit() else 0
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a line torn by a crash mid-append was never acknowledged
            logger.warning("store spool: dropping a torn last line of %d bytes", len(data) - complete)
            os.truncate(self.path, complete)
            data = data[:complete]
        if done > len(data):  # emptied, but the crash came before the offset was reset
            done = 0
        self._done, self._size = done, len(data)
        self.bytes = len(data) - done
        self.entries = data.count(b"\n", done)
        if self.entries:
            logger.warning("store spool %s holds %d writes not yet in the database", self.path, self.entries)

    async def close(self) -> None:
        async with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._progress_fd is not None:
                os.close(self._progress_fd)
                self._progress_fd = None

    # --- writing -----------------------------------------------------------------------

    async def append(self, op: str, args: dict[str, Any], *, headroom: int = 1) -> None:
        """Add one write at the end, durably; WriteRefused when the spool is full.

        ``headroom`` multiplies the bounds: writes that follow from a message already accepted
        (its reply, its memories) get room beyond the point where new messages are refused.
        """
        encoded = (json.dumps({"op": op, "args": args}, separators=(",", ":")) + "\n").encode()
        async with self._lock:
            if self._file is None:
                raise StorageError("the store spool is not open")
            max_entries, max_bytes = self.max_entries * headroom, self.max_bytes * headroom
            if self.entries + 1 > max_entries or self.bytes + len(encoded) > max_bytes:
                raise WriteRefused(
                    self._service,
                    f"the local spool is full ({self.entries} writes, {self.bytes} bytes waiting); "
                    "nothing more can be stored until the database is back",
                    variable="STORE_SPOOL_MAX_ENTRIES",
                )
            try:
                await asyncio.to_thread(self._append, encoded)
            except OSError as exc:  # e.g. the disk is full too: nothing of it was kept
                raise WriteRefused(
                    self._service, f"cannot write the local spool {self.path}: {exc}", variable="DATA_DIR"
                ) from exc
            self.entries += 1
            self.bytes += len(encoded)
            self._size += len(encoded)

    def _append(self, encoded: bytes) -> None:
        fd = self._file.fileno()
        try:
            written = 0
            while written < len(encoded):
                written += os.write(fd, encoded[written:])
            os.fsync(fd)
        except OSError:
            os.truncate(self.path, self._size)  # no torn line for the next entry to follow
            raise

    # --- replaying ---------------------------------------------------------------------

    async def pending(self) -> list[SpoolEntry]:
        """Every entry not yet replayed, oldest first."""
        async with self._lock:
            done, size = self._done, self._size
            data = await asyncio.to_thread(self._read, done, size)
        entries = []
        position = done
        for raw in data.splitlines(keepends=True):
            position += len(raw)
            try:
                item = json.loads(raw)
                entries.append(SpoolEntry(op=str(item["op"]), args=dict(item["args"]), end=position))
            except (ValueError, KeyError, TypeError):
                logger.error("store spool: unreadable entry ending at byte %d: %r", position, raw[:200])
                entries.append(SpoolEntry(op="", args={"raw": raw.decode(errors="replace")}, end=position))
        return entries

    def _read(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as file:
            file.seek(start)
            return file.read(end - start)

    async def mark_replayed(self, entry: SpoolEntry) -> None:
        """Everything up to and including ``entry`` is in the database."""
        async with self._lock:
            consumed = self._size - self._done
            self.entries = max(self.entries - 1, 0)
            if entry.end >= self._size:  # all of it: start the file afresh
                await asyncio.to_thread(self._reset)
                self._done = self._size = self.bytes = self.entries = 0
            else:
                await asyncio.to_thread(self._write_progress, entry.end)
                self._done = entry.end
                self.bytes = self._size - self._done
            logger.debug("store spool: %d of %d bytes left", self.bytes, consumed)

    def _write_progress(self, offset: int) -> None:
        assert self._progress_fd is not None
        os.pwrite(self._progress_fd, str(offset).rjust(_PROGRESS_WIDTH).encode() + b"\n", 0)
        os.fdatasync(self._progress_fd)

    def _reset(self) -> None:
        self._file.truncate(0)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._write_progress(0)

    async def reject(self, entry: SpoolEntry, reason: str) -> None:
        """Keep an entry the database refused in the rejected file (never silently dropped)."""
        line = json.dumps({"op": entry.op, "args": entry.args, "reason": reason}, ensure_ascii=False) + "\n"

        def write() -> None:
            with open(self.rejected_path, "a", encoding="utf-8") as file:
                file.write(line)
                file.flush()
                os.fsync(file.fileno())

        async with self._lock:
            await asyncio.to_thread(write)


# --- JSON forms of the records -----------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$dt"}:
            return datetime.fromisoformat(value["$dt"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _message(args: dict[str, Any]) -> StoredMessage:
    return StoredMessage(**_decode(args))


def _memory(args: dict[str, Any]) -> MemoryRecord:
    fields = _decode(args)
    fields["source_message_ids"] = tuple(fields.get("source_message_ids") or ())
    return MemoryRecord(**fields)


_DELETED = object()
_MISSING = object()


class SpoolingConversationStore:
    """The ConversationStore port (and memory care) over :class:`SQLConversationStore`,
    spooling writes to local disk while the database is unreachable."""

    def __init__(
        self,
        store: SQLConversationStore,
        spool_dir: Path,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        replay_interval_s: float = 2.0,
    ) -> None:
        self.store = store
        service = "PostgreSQL" if store.kind == "postgresql" else "SQLite"
        self._service = service
        self.spool = WriteSpool(spool_dir, max_entries=max_entries, max_bytes=max_bytes, service=service)
        self._replay_interval_s = replay_interval_s
        self._replay_lock = asyncio.Lock()
        self._replayer: asyncio.Task[None] | None = None
        self._pending_settings: dict[tuple[str, str], object] = {}
        self._known_settings: OrderedDict[tuple[str, str], JSONValue] = OrderedDict()
        self._known_users: OrderedDict[str, UserProfile] = OrderedDict()
        self.spooled: Counter[str] = Counter()
        """Writes spooled since start, by operation (for tests and metrics)."""
        self.replayed = 0

    @property
    def pending(self) -> int:
        """Writes waiting in the spool for the database."""
        return self.spool.entries

    @property
    def kind(self) -> str:
        return self.store.kind

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the SQL store, then replay what an earlier run left in the spool."""
        await self.store.start()
        await self.spool.open()
        for entry in await self.spool.pending():
            self._note_pending(entry.op, entry.args)
        if not self.spool.empty:
            await self.replay()
        self._replayer = asyncio.create_task(self._replay_forever(), name="store-spool-replay")

    async def aclose(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None
        if not self.spool.empty:
            await self.replay()
        if not self.spool.empty:
            logger.warning(
                "%d writes stay in the store spool %s; they are written at the next start",
                self.spool.entries,
                self.spool.path,
            )
        await self.spool.close()
        await self.store.aclose()

    async def ping(self) -> None:
        await self.store.ping()

    async def replay(self) -> bool:
        """Write the spooled entries in order; True when the spool is empty afterwards."""
        async with self._replay_lock:
            replayed = 0
            while not self.spool.empty:
                for entry in await self.spool.pending():
                    try:
                        await self._apply(entry.op, entry.args)
                    except BackendUnavailable as exc:
                        logger.info("store spool: replay paused, %s (%d writes left)", exc, self.pending)
                        return False
                    except (StorageError, ValueError, TypeError, KeyError) as exc:
                        logger.error("store spool: the database refused a spooled %s: %s", entry.op, exc)
                        await self.spool.reject(entry, str(exc))
                    await self.spool.mark_replayed(entry)
                    replayed += 1
                    self.replayed += 1
            self._pending_settings.clear()
            if replayed:
                logger.info("store spool: %d writes replayed into %s", replayed, self._service)
            return True

    async def _replay_forever(self) -> None:
        while True:
            await asyncio.sleep(self._replay_interval_s)
            if self.spool.empty:
                continue
            try:
                await self.store.ping()
                await self.replay()
            except BackendUnavailable:
                continue
            except (WhisperEngineError, OSError):  # this task's error boundary
                logger.exception("store spool: replay failed; retrying in %gs", self._replay_interval_s)

    async def _apply(self, op: str, args: dict[str, Any]) -> None:
        store = self.store
        a = _decode(args)
        match op:
            case "touch_user":
                profile = await store.touch_user(
                    a["user_key"],
                    platform=a["platform"],
                    user_id=a["user_id"],
                    display_name=a["display_name"],
                    seen_at=a["seen_at"],
                )
                self._remember_user(profile)
            case "set_preferred_name":
                await store.set_preferred_name(a["user_key"], a["name"])
            case "add_message":
                await store.add_message(_message(args["message"]))
            case "add_memories":
                await store.add_memories([_memory(m) for m in args["memories"]])
            case "write_batch":
                batch = WriteBatch(
                    messages=[_message(m) for m in args["messages"]],
                    memories=[_memory(m) for m in args["memories"]],
                    used=a["used"],
                    used_at=a["used_at"],
                )
                await store.write_batch(batch)
            case "set_setting":
                await store.set_setting(a["scope"], a["key"], a["value"])
            case "delete_setting":
                await store.delete_setting(a["scope"], a["key"])
            case "supersede_memory":
                await store.supersede_memory(
                    a["user_key"], a["memory_id"], superseded_by=a["superseded_by"], at=a["at"]
                )
            case "mark_memories_used":
                await store.mark_memories_used(a["user_key"], a["ids"], at=a["at"])
            case "enqueue_vector_op":
                await store.enqueue_vector_op(args["scope"], args["vector_op"], args["payload"])
            case _:
                raise ValueError(f"unknown spooled operation {op!r}")

    # --- the write path ------------------------------------------------------------------

    async def _write(
        self, op: str, args: dict[str, Any], direct: Callable[[], Awaitable[T]], spooled: Callable[[], T]
    ) -> T:
        """Write to the database, or to the spool when it is down or the spool is not empty."""
        if self.spool.empty:
            try:
                return await direct()
            except WriteRefused:
                raise
            except BackendUnavailable as exc:
                logger.warning("%s; spooling %s until it is back", exc, op)
        # new input is refused at the bound; what follows from input already accepted has room
        new_input = op == "touch_user" or (op == "add_message" and args["message"]["role"] == "user")
        await self.spool.append(op, _encode(args), headroom=1 if new_input else 2)
        self.spooled[op] += 1
        self._note_pending(op, args)
        return spooled()

    def _note_pending(self, op: str, args: dict[str, Any]) -> None:
        """Remember spooled settings, so that reading one back answers at once."""
        if op == "set_setting":
            self._pending_settings[(args["scope"], args["key"])] = args["value"]
        elif op == "delete_setting":
            self._pending_settings[(args["scope"], args["key"])] = _DELETED

    async def _replay_first(self, operation: str) -> None:
        """Writes that need the database's answer go after everything spooled, or not at all."""
        if not self.spool.empty and not await self.replay():
            raise BackendUnavailable(
                self._service,
                f"{operation} must wait: {self.pending} earlier writes are still spooled",
                variable="DATABASE_URL",
            )

    # --- users ---------------------------------------------------------------------------

    def _remember_user(self, profile: UserProfile) -> UserProfile:
        self._known_users[profile.user_key] = profile
        self._known_users.move_to_end(profile.user_key)
        while len(self._known_users) > _MEMO_SIZE:
            self._known_users.popitem(last=False)
        return profile

    async def touch_user(
        self, user_key: str, *, platform: str, user_id: str, display_name: str, seen_at: datetime
    ) -> UserProfile:
        args = {
            "user_key": user_key,
            "platform": platform,
            "user_id": user_id,
            "display_name": display_name,
            "seen_at": seen_at,
        }

        async def direct() -> UserProfile:
            profile = await self.store.touch_user(
                user_key, platform=platform, user_id=user_id, display_name=display_name, seen_at=seen_at
            )
            return self._remember_user(profile)

        def spooled() -> UserProfile:
            known = self._known_users.get(user_key)
            if known is None:
                profile = UserProfile(user_key, platform, user_id, display_name, seen_at, seen_at, 1)
            else:
                profile = replace(
                    known,
                    display_name=display_name,
                    first_seen=min(known.first_seen, seen_at),
                    last_seen=max(known.last_seen, seen_at),
                    message_count=known.message_count + 1,
                )
            return self._remember_user(profile)

        return await self._write("touch_user", args, direct, spooled)

    async def get_user(self, user_key: str) -> UserProfile | None:
        try:
            profile = await self.store.get_user(user_key)
        except BackendUnavailable:
            known = self._known_users.get(user_key)
            if known is None:
                raise
            return known
        return None if profile is None else self._remember_user(profile)

    async def set_preferred_name(self, user_key: str, name: str | None) -> bool:
        def spooled() -> bool:
            known = self._known_users.get(user_key)
            if known is not None:
                self._remember_user(replace(known, preferred_name=name))
            return True

        return await self._write(
            "set_preferred_name",
            {"user_key": user_key, "name": name},
            lambda: self.store.set_preferred_name(user_key, name),
            spooled,
        )

    # --- messages ------------------------------------------------------------------------

    async def add_message(self, message: StoredMessage) -> None:
        if message.created_at.tzinfo is None:
            raise ValueError(f"created_at must be timezone-aware (got naive {message.created_at!r})")
        await self._write(
            "add_message", {"message": asdict(message)}, lambda: self.store.add_message(message), lambda: None
        )

    async def write_batch(self, batch: WriteBatch) -> None:
        if not batch:
            return
        for record in (*batch.messages, *batch.memories):
            if record.created_at.tzinfo is None:
                raise ValueError(f"created_at must be timezone-aware (got naive {record.created_at!r})")
        args = {
            "messages": [asdict(m) for m in batch.messages],
            "memories": [asdict(m) for m in batch.memories],
            "used": {owner: list(dict.fromkeys(ids)) for owner, ids in batch.used.items() if ids},
            "used_at": batch.used_at,
        }
        await self._write("write_batch", args, lambda: self.store.write_batch(batch), lambda: None)

    async def recent_messages(self, conversation_key: str, limit: int) -> list[StoredMessage]:
        return await self.store.recent_messages(conversation_key, limit)

    async def user_messages(self, user_key: str, limit: int = 1000) -> list[StoredMessage]:
        await self._catch_up()
        return await self.store.user_messages(user_key, limit)

    async def _catch_up(self) -> None:
        """Before a read of a user's whole history: replay the spool when the database is back."""
        if not self.spool.empty:
            await self.replay()

    # --- memories ------------------------------------------------------------------------

    async def add_memories(self, memories: Sequence[MemoryRecord]) -> None:
        if not memories:
            return
        for memory in memories:
            if memory.created_at.tzinfo is None:
                raise ValueError(f"created_at must be timezone-aware (got naive {memory.created_at!r})")
        await self._write(
            "add_memories",
            {"memories": [asdict(m) for m in memories]},
            lambda: self.store.add_memories(memories),
            lambda: None,
        )

    async def get_memories(self, user_key: str, ids: Sequence[str]) -> list[MemoryRecord]:
        return await self.store.get_memories(user_key, ids)

    async def list_memories(self, user_key: str, limit: int = 100, offset: int = 0) -> list[MemoryRecord]:
        await self._catch_up()
        return await self.store.list_memories(user_key, limit, offset)

    async def count_memories(self, user_key: str) -> int:
        return await self.store.count_memories(user_key)

    async def delete_memories(self, user_key: str, ids: Sequence[str]) -> int:
        await self._replay_first("deleting memories")
        return await self.store.delete_memories(user_key, ids)

    async def keyword_search(self, user_key: str, query: str, k: int) -> list[tuple[MemoryRecord, float]]:
        return await self.store.keyword_search(user_key, query, k)

    # --- memory care -----------------------------------------------------------------------

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
        await self._replay_first("reinforcing a memory")
        return await self.store.reinforce_memory(
            user_key,
            memory_id,
            source_message_id=source_message_id,
            at=at,
            importance_delta=importance_delta,
            max_importance=max_importance,
        )

    async def supersede_memory(
        self, user_key: str, memory_id: str, *, superseded_by: str, at: datetime
    ) -> bool:
        return await self._write(
            "supersede_memory",
            {"user_key": user_key, "memory_id": memory_id, "superseded_by": superseded_by, "at": at},
            lambda: self.store.supersede_memory(user_key, memory_id, superseded_by=superseded_by, at=at),
            lambda: True,
        )

    async def mark_memories_used(self, user_key: str, ids: Sequence[str], *, at: datetime) -> int:
        if not ids:
            return 0
        unique = list(dict.fromkeys(ids))
        return await self._write(
            "mark_memories_used",
            {"user_key": user_key, "ids": unique, "at": at},
            lambda: self.store.mark_memories_used(user_key, unique, at=at),
            lambda: len(unique),
        )

    async def memory_states(self, user_key: str, ids: Sequence[str] | None = None) -> list[MemoryState]:
        return await self.store.memory_states(user_key, ids)

    async def stale_memories(
        self, *, idle_before: datetime, max_importance: float, max_mentions: int, after_id: str, limit: int
    ) -> list[MemoryState]:
        return await self.store.stale_memories(
            idle_before=idle_before,
            max_importance=max_importance,
            max_mentions=max_mentions,
            after_id=after_id,
            limit=limit,
        )

    async def conversation_spans(
        self, *, before: datetime, after: tuple[str, str] | None, limit: int
    ) -> list[ConversationSpan]:
        await self._catch_up()  # compaction reads whole sessions: spooled turns first
        return await self.store.conversation_spans(before=before, after=after, limit=limit)

    async def conversation_messages(
        self, user_key: str, conversation_key: str, *, after: datetime | None, limit: int
    ) -> list[StoredMessage]:
        return await self.store.conversation_messages(user_key, conversation_key, after=after, limit=limit)

    # --- settings ------------------------------------------------------------------------

    def _remember_setting(self, scope: str, key: str, value: JSONValue | None) -> None:
        self._known_settings[(scope, key)] = value
        self._known_settings.move_to_end((scope, key))
        while len(self._known_settings) > _MEMO_SIZE:
            self._known_settings.popitem(last=False)

    async def get_setting(self, scope: str, key: str) -> JSONValue | None:
        pending = self._pending_settings.get((scope, key), _MISSING)
        if pending is not _MISSING:
            return None if pending is _DELETED else pending
        try:
            value = await self.store.get_setting(scope, key)
        except BackendUnavailable:
            if (scope, key) not in self._known_settings:
                raise
            return self._known_settings[(scope, key)]
        self._remember_setting(scope, key, value)
        return value

    async def set_setting(self, scope: str, key: str, value: JSONValue) -> None:
        await self._write(
            "set_setting",
            {"scope": scope, "key": key, "value": value},
            lambda: self.store.set_setting(scope, key, value),
            lambda: None,
        )
        self._remember_setting(scope, key, value)

    async def delete_setting(self, scope: str, key: str) -> None:
        await self._write(
            "delete_setting",
            {"scope": scope, "key": key},
            lambda: self.store.delete_setting(scope, key),
            lambda: None,
        )
        self._remember_setting(scope, key, None)

    async def settings_with_key(
        self, key: str, *, after_scope: str = "", limit: int = 500
    ) -> list[tuple[str, JSONValue]]:
        return await self.store.settings_with_key(key, after_scope=after_scope, limit=limit)

    # --- the vector outbox (storage.vector.outbox.VectorOutbox) ------------------------------

    async def enqueue_vector_op(self, scope: str, op: OutboxOp, payload: Mapping[str, Any]) -> int:
        """Queue a vector-store write; while the database is down too, it waits in the spool
        (returning 0 for its id) and reaches the outbox table when the spool is replayed."""
        args = {"scope": scope, "vector_op": op, "payload": dict(payload)}
        return await self._write(
            "enqueue_vector_op", args, lambda: self.store.enqueue_vector_op(scope, op, payload), lambda: 0
        )

    async def vector_outbox_batch(self, limit: int) -> list[OutboxEntry]:
        await self._catch_up()  # writes queued while the database was down come first
        return await self.store.vector_outbox_batch(limit)

    async def delete_vector_outbox(self, ids: Sequence[int]) -> int:
        return await self.store.delete_vector_outbox(ids)

    async def delete_vector_outbox_scope(self, scope: str) -> int:
        await self._replay_first("removing queued vector writes")
        return await self.store.delete_vector_outbox_scope(scope)

    async def count_vector_outbox(self) -> int:
        await self._catch_up()
        return await self.store.count_vector_outbox()

    # --- erasure -------------------------------------------------------------------------

    async def forget_user(self, user_key: str) -> int:
        await self._replay_first("erasing a user")
        self._known_users.pop(user_key, None)
        for scope_key in [k for k in self._known_settings if k[0] == user_key]:
            del self._known_settings[scope_key]
        return await self.store.forget_user(user_key)

    async def merge_users(self, source: str, target: str) -> MergedUser:
        await self._replay_first("linking accounts")
        for user_key in (source, target):  # both profiles and their settings change
            self._known_users.pop(user_key, None)
            for scope_key in [k for k in self._known_settings if k[0] == user_key]:
                del self._known_settings[scope_key]
        return await self.store.merge_users(source, target)


__all__ = ["SpoolEntry", "SpoolingConversationStore", "WriteSpool"]
