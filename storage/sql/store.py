"""SQLConversationStore: the ConversationStore port on SQLite (aiosqlite) or PostgreSQL (asyncpg).

Schema (``schema.py``; built by the Alembic revisions in ``migrations/``, which ``start()`` runs to
head): ``users`` keyed by user_key; ``messages``/``memories`` keyed by an integer ``seq`` (SQLite
``INTEGER PRIMARY KEY``, i.e. a stable rowid; PostgreSQL BIGSERIAL) with the engine's string ``id``
UNIQUE, so retried writes are ``ON CONFLICT (id)`` no-ops, same-instant rows keep insertion order,
and a later revision can add an external-content FTS5 table (``content_rowid='seq'``) or a
tsvector column + GIN index without rebuilding them; ``settings`` keyed by (scope, key), JSON value.
Every query filters on its scope through an index ``(scope, created_at, seq)`` that also serves its
ORDER BY; no foreign keys (the scope keys are logical owners). Timestamps: ``timestamptz`` on
PostgreSQL, fixed-width naive-UTC text on SQLite; both read back as aware UTC, naive ones refused.
Dialects: upserts via each dialect's ``insert().on_conflict_*``. SQLite: WAL, synchronous=NORMAL,
foreign_keys, busy_timeout per connection; ``:memory:`` is one connection that calls take turns on.
PostgreSQL: one-statement calls in autocommit (no BEGIN/COMMIT trips), no pre-ping (measured +0.3 ms).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from engine.errors import BackendUnavailable, ConfigError, StorageError
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
from storage.sql.schema import memories, messages, settings, users, vector_outbox
from storage.vector.outbox import OutboxEntry, OutboxOp

logger = logging.getLogger(__name__)

DatabaseKind = Literal["sqlite", "postgresql"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_VARIABLE = "DATABASE_URL"
_PG_MIGRATION_LOCK = 0x5745_5351  # pg_advisory_xact_lock key: one migrator at a time
_IN_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit

# --- URLs --------------------------------------------------------------------------------


def _parse(url: str) -> tuple[DatabaseKind, URL]:
    try:
        parsed = make_url(url.strip())
    except sa_exc.ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a database URL (expected sqlite:///path or postgresql://...)",
            variable=_VARIABLE,
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return "sqlite", parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        query = dict(parsed.query)
        if "sslmode" in query:  # libpq spelling; asyncpg calls it ssl
            query["ssl"] = query.pop("sslmode")
        return "postgresql", parsed.set(drivername="postgresql+asyncpg", query=query)
    raise ConfigError(
        f"DATABASE_URL scheme {parsed.drivername!r} is not supported: use sqlite:///path/to.db or "
        "postgresql://user@host:port/db",
        variable=_VARIABLE,
    )


def database_kind(url: str) -> DatabaseKind:
    """``"sqlite"`` or ``"postgresql"`` for a DATABASE_URL; ConfigError for anything else."""
    return _parse(url)[0]


def sqlalchemy_url(url: str) -> URL:
    """The SQLAlchemy async-driver URL for a DATABASE_URL as users write it."""
    return _parse(url)[1]


def redact_url(url: str | URL) -> str:
    """The URL with any password replaced by ``***``, safe to log or show."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except sa_exc.ArgumentError:
        return "<unparseable URL>"
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return f"sqlite:///{parsed.database or ':memory:'}"
    return parsed.set(drivername=backend).render_as_string(hide_password=True)


# --- migrations --------------------------------------------------------------------------


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged migrations; ``connection`` is used by ``env.py``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    """Run pending migrations on a (sync) connection; use with ``AsyncConnection.run_sync``."""
    command.upgrade(alembic_config(connection), "head")


# --- row mapping -------------------------------------------------------------------------

_USER_COLS = [users.c[f.name] for f in fields(UserProfile)]
_MESSAGE_COLS = [messages.c[f.name] for f in fields(StoredMessage)]
_MEMORY_COLS = [memories.c[f.name] for f in fields(MemoryRecord)]


def _memory(row: sa.Row[Any]) -> MemoryRecord:
    m = row._mapping
    return MemoryRecord(
        id=m["id"],
        user_key=m["user_key"],
        text=m["text"],
        created_at=m["created_at"],
        kind=m["kind"],
        importance=m["importance"],
        platform=m["platform"],
        channel_id=m["channel_id"],
        source_message_ids=tuple(m["source_message_ids"] or ()),
        search_context=m["search_context"],
    )


_STATE_COLS = [memories.c[f.name] for f in fields(MemoryState)]


def _state(row: sa.Row[Any]) -> MemoryState:
    m = row._mapping
    return MemoryState(
        id=m["id"],
        user_key=m["user_key"],
        importance=float(m["importance"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_used_at=m["last_used_at"],
        use_count=int(m["use_count"]),
        mentions=int(m["mentions"]),
        superseded_by=m["superseded_by"],
        source_message_ids=tuple(m["source_message_ids"] or ()),
    )


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got naive {value!r})")


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), _IN_CHUNK):
        yield unique[start : start + _IN_CHUNK]


def _reason(exc: BaseException) -> str:
    inner = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    if isinstance(inner, TimeoutError):
        return "timed out"
    text = str(inner).strip() or type(inner).__name__
    return text.splitlines()[0]


# SQLite primary result codes that say "not now", not "wrong statement": busy, locked, I/O
# error, disk full, cannot open. PostgreSQL SQLSTATEs: connection exceptions (08), insufficient
# resources such as a full disk (53), shutdown/start-up (57P01-57P03), and a transaction rolled
# back to be retried: serialization failure or deadlock (40001, 40P01; concurrent writers of one
# user's keyword term counts can meet in a deadlock, which PostgreSQL breaks by aborting one).
_SQLITE_CANNOT_SERVE = frozenset({5, 6, 10, 13, 14})
_PG_CANNOT_SERVE = ("08", "53", "57P01", "57P02", "57P03", "40001", "40P01")


def _cannot_serve(exc: sa_exc.DBAPIError) -> bool:
    """The database cannot serve right now (a write may succeed later): BackendUnavailable."""
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_CANNOT_SERVE
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return isinstance(state, str) and state.startswith(_PG_CANNOT_SERVE)


# --- statements, built once per dialect --------------------------------------------------

_GET_USER = sa.select(*_USER_COLS).where(users.c.user_key == sa.bindparam("user_key"))
_FTS_OPTIMIZE = sa.text("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")
_SET_PREFERRED_NAME = (
    users.update()
    .where(users.c.user_key == sa.bindparam("b_user_key"))
    .values(preferred_name=sa.bindparam("name"))
)
_RECENT = (
    sa.select(*_MESSAGE_COLS)
    .where(messages.c.conversation_key == sa.bindparam("key"))
    .order_by(messages.c.created_at.desc(), messages.c.seq.desc())
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_USER_MESSAGES = (
    sa.select(*_MESSAGE_COLS)
    .where(messages.c.user_key == sa.bindparam("user_key"))
    .order_by(messages.c.created_at, messages.c.seq)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_GET_MEMORIES = sa.select(*_MEMORY_COLS).where(
    memories.c.user_key == sa.bindparam("user_key"),
    memories.c.id.in_(sa.bindparam("ids", expanding=True)),
)
_LIST_MEMORIES = (
    sa.select(*_MEMORY_COLS)
    .where(memories.c.user_key == sa.bindparam("user_key"))
    .order_by(memories.c.created_at.desc(), memories.c.seq.desc())
    .limit(sa.bindparam("limit", type_=sa.Integer))
    .offset(sa.bindparam("offset", type_=sa.Integer))
)
_COUNT_MEMORIES = (
    sa.select(sa.func.count()).select_from(memories).where(memories.c.user_key == sa.bindparam("user_key"))
)
_DELETE_MEMORIES = memories.delete().where(
    memories.c.user_key == sa.bindparam("user_key"),
    memories.c.id.in_(sa.bindparam("ids", expanding=True)),
)
# Update statements may not name bind parameters after columns.
_OWNED = (memories.c.user_key == sa.bindparam("owner"), memories.c.id == sa.bindparam("memory"))
_STATE_FOR_UPDATE = sa.select(*_STATE_COLS).where(*_OWNED).with_for_update()
_REINFORCE = (
    memories.update()
    .where(*_OWNED)
    .values(
        importance=sa.bindparam("new_importance", type_=sa.Float),
        mentions=memories.c.mentions + 1,
        source_message_ids=sa.bindparam("sources", type_=memories.c.source_message_ids.type),
        updated_at=sa.bindparam("at", type_=memories.c.updated_at.type),
    )
)
_SUPERSEDE = (
    memories.update()
    .where(*_OWNED)
    .values(
        superseded_by=sa.bindparam("replacement"),
        updated_at=sa.bindparam("at", type_=memories.c.updated_at.type),
    )
)
_MARK_USED = (
    memories.update()
    .where(
        memories.c.user_key == sa.bindparam("owner"),
        memories.c.id.in_(sa.bindparam("ids", expanding=True)),
    )
    .values(
        use_count=memories.c.use_count + 1,
        last_used_at=sa.bindparam("at", type_=memories.c.last_used_at.type),
    )
)
_ALL_STATES = (
    sa.select(*_STATE_COLS)
    .where(memories.c.user_key == sa.bindparam("user_key"))
    .order_by(memories.c.created_at, memories.c.seq)
)
_STATES = sa.select(*_STATE_COLS).where(
    memories.c.user_key == sa.bindparam("user_key"), memories.c.id.in_(sa.bindparam("ids", expanding=True))
)
_IDLE_BEFORE = sa.bindparam("idle_before", type_=memories.c.created_at.type)
_STALE = (
    sa.select(*_STATE_COLS)
    .where(
        memories.c.id > sa.bindparam("after_id"),
        memories.c.importance < sa.bindparam("max_importance", type_=sa.Float),
        memories.c.mentions <= sa.bindparam("max_mentions", type_=sa.Integer),
        memories.c.created_at < _IDLE_BEFORE,
        sa.or_(memories.c.last_used_at.is_(None), memories.c.last_used_at < _IDLE_BEFORE),
    )
    .order_by(memories.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_CREATED_BEFORE = sa.bindparam("before", type_=messages.c.created_at.type)
_SPANS = (
    sa.select(messages.c.user_key, messages.c.conversation_key, sa.func.max(messages.c.created_at))
    .where(
        messages.c.created_at < _CREATED_BEFORE,
        sa.or_(
            messages.c.user_key > sa.bindparam("after_user"),
            sa.and_(
                messages.c.user_key == sa.bindparam("after_user"),
                messages.c.conversation_key > sa.bindparam("after_conversation"),
            ),
        ),
    )
    .group_by(messages.c.user_key, messages.c.conversation_key)
    .order_by(messages.c.user_key, messages.c.conversation_key)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_CONVERSATION_MESSAGES = (
    sa.select(*_MESSAGE_COLS)
    .where(
        messages.c.user_key == sa.bindparam("user_key"),
        messages.c.conversation_key == sa.bindparam("conversation_key"),
        messages.c.created_at > sa.bindparam("after", type_=messages.c.created_at.type),
    )
    .order_by(messages.c.created_at, messages.c.seq)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_GET_SETTING = sa.select(settings.c.value).where(
    settings.c.scope == sa.bindparam("scope"), settings.c.key == sa.bindparam("key")
)
_DELETE_SETTING = settings.delete().where(
    settings.c.scope == sa.bindparam("scope"), settings.c.key == sa.bindparam("key")
)
# Walks the primary key (scope, key) in scope order: a page reads the rows of its scopes only.
_SETTINGS_WITH_KEY = (
    sa.select(settings.c.scope, settings.c.value)
    .where(settings.c.key == sa.bindparam("key"), settings.c.scope > sa.bindparam("after_scope"))
    .order_by(settings.c.scope)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
# merge_users: source's rows change owner; target's settings win over source's of the same key.
_MERGE_MEMORY_IDS = (
    sa.select(memories.c.id).where(memories.c.user_key == sa.bindparam("source")).order_by(memories.c.seq)
)
_MERGE_MESSAGES = (
    messages.update()
    .where(messages.c.user_key == sa.bindparam("source"))
    .values(user_key=sa.bindparam("target"))
)
_MERGE_MEMORIES = (
    memories.update()
    .where(memories.c.user_key == sa.bindparam("source"))
    .values(user_key=sa.bindparam("target"))
)
_target_settings = settings.alias("target_settings")
_MERGE_DROP_SHADOWED_SETTINGS = settings.delete().where(
    settings.c.scope == sa.bindparam("source"),
    settings.c.key.in_(
        sa.select(_target_settings.c.key).where(_target_settings.c.scope == sa.bindparam("target"))
    ),
)
_MERGE_SETTINGS = (
    settings.update().where(settings.c.scope == sa.bindparam("source")).values(scope=sa.bindparam("target"))
)
_SOURCE_PROFILE = sa.select(*_USER_COLS).where(users.c.user_key == sa.bindparam("source")).with_for_update()
_TARGET_EXISTS = (
    sa.select(users.c.user_key).where(users.c.user_key == sa.bindparam("target")).with_for_update()
)
_SOURCE_FIRST = sa.bindparam("first", type_=users.c.first_seen.type)
_SOURCE_LAST = sa.bindparam("last", type_=users.c.last_seen.type)
_MERGE_PROFILE = (
    users.update()
    .where(users.c.user_key == sa.bindparam("target"))
    .values(
        message_count=users.c.message_count + sa.bindparam("count", type_=sa.Integer),
        first_seen=sa.case((users.c.first_seen > _SOURCE_FIRST, _SOURCE_FIRST), else_=users.c.first_seen),
        last_seen=sa.case((users.c.last_seen < _SOURCE_LAST, _SOURCE_LAST), else_=users.c.last_seen),
        preferred_name=sa.func.coalesce(users.c.preferred_name, sa.bindparam("name", type_=sa.Text)),
    )
)
_RENAME_PROFILE = (
    users.update()
    .where(users.c.user_key == sa.bindparam("source"))
    .values(
        user_key=sa.bindparam("target"),
        platform=sa.bindparam("new_platform"),
        user_id=sa.bindparam("new_user_id"),
    )
)
_DROP_SOURCE_PROFILE = users.delete().where(users.c.user_key == sa.bindparam("source"))

_FORGET = (
    messages.delete().where(messages.c.user_key == sa.bindparam("user_key")),
    memories.delete().where(memories.c.user_key == sa.bindparam("user_key")),
    settings.delete().where(settings.c.scope == sa.bindparam("user_key")),
    users.delete().where(users.c.user_key == sa.bindparam("user_key")),
)


_OUTBOX_INSERT = vector_outbox.insert().returning(vector_outbox.c.id)
_OUTBOX_BATCH = (
    sa.select(vector_outbox).order_by(vector_outbox.c.id).limit(sa.bindparam("limit", type_=sa.Integer))
)
_OUTBOX_DELETE = vector_outbox.delete().where(vector_outbox.c.id.in_(sa.bindparam("ids", expanding=True)))
_OUTBOX_DELETE_SCOPE = vector_outbox.delete().where(vector_outbox.c.scope == sa.bindparam("scope"))
_OUTBOX_COUNT = sa.select(sa.func.count()).select_from(vector_outbox)


# --- keyword search ----------------------------------------------------------------------

# Words too common to tell memories apart. Leaving them to BM25 costs recall and time (they match
# most rows): see engine/MEMORY_RECALL.md.
_STOPWORD_TEXT = """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves s t d ll m re ve don didn doesn isn wasn"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"\w+")
_MAX_TERMS = 32


def keyword_terms(query: str) -> list[str]:
    """The distinct words of a free-text query, lowercased, stopwords dropped, first 32 kept.

    Only runs of letters/digits survive, so no query syntax (quotes, ``-``, ``*``, ``:``,
    parentheses, ``NEAR``, ``&|!``) reaches FTS5 or ``to_tsquery``; each term is then quoted.
    """
    terms = dict.fromkeys(w for w in _WORD.findall(query.lower()) if w not in STOPWORDS)
    return list(terms)[:_MAX_TERMS]


def fts5_query(terms: Sequence[str]) -> str:
    """An FTS5 MATCH expression: the terms as quoted strings, OR-ed."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def tsquery(terms: Sequence[str]) -> str:
    """A ``to_tsquery`` expression: the terms as quoted lexemes, OR-ed."""
    return " | ".join("'" + t.replace("'", "''").replace("\\", "") + "'" for t in terms)


_MEMORY_SELECT = ", ".join(f"m.{c.name}" for c in _MEMORY_COLS)
_SQLITE_KEYWORD_SEARCH = sa.text(
    f"SELECT {_MEMORY_SELECT}, -bm25(memories_fts, 1.0, 0.5) AS score "
    "FROM memories_fts JOIN memories AS m ON m.seq = memories_fts.rowid "
    "WHERE memories_fts MATCH :query AND m.user_key = :user_key AND m.superseded_by IS NULL "
    "ORDER BY bm25(memories_fts, 1.0, 0.5), m.seq DESC LIMIT :k"
).columns(*_MEMORY_COLS, sa.column("score", sa.Float))

# PostgreSQL: the query's lexemes (stemmed as ``text_search`` is) with the number of the user's
# current memories holding each, from ``memory_terms``; the empty term counts the memories.
_PG_TERM_COUNTS = sa.text(
    "SELECT w.term, coalesce(c.memories, 0) AS memories "
    "FROM unnest(tsvector_to_array(to_tsvector('english'::regconfig, :words)) || '{\"\"}'::text[]) "
    "AS w(term) "
    "LEFT JOIN memory_terms AS c ON c.user_key = :user_key AND c.term = w.term"
).columns(sa.column("term", sa.Text), sa.column("memories", sa.Integer))
# ts_rank weights of D, C, B (the search context) and A (the text): the context at half weight,
# as bm25(memories_fts, 1.0, 0.5) has it on SQLite; normalization 1 divides by 1 + log(length).
_PG_TERM_RANK = "ts_rank('{0, 0, 0.5, 1}'::float4[], m.text_search, CAST(CAST(:q%d AS text) AS tsquery), 1)"


@functools.cache
def _pg_keyword_search(terms: int) -> sa.TextClause:
    """The ranking statement for ``terms`` weighted lexemes ``:q0``/``:w0`` ... (PostgreSQL)."""
    score = " + ".join(f"CAST(:w{i} AS float8) * {_PG_TERM_RANK % i}" for i in range(terms))
    return sa.text(
        f"SELECT {_MEMORY_SELECT}, {score} AS score FROM memories AS m "
        "WHERE m.user_key = :user_key AND m.superseded_by IS NULL "
        "AND m.text_search @@ CAST(CAST(:finding AS text) AS tsquery) "
        "ORDER BY score DESC, m.seq DESC LIMIT :k"
    ).columns(*_MEMORY_COLS, sa.column("score", sa.Float))


@dataclass(frozen=True, slots=True)
class KeywordPlan:
    """How one PostgreSQL keyword search runs: which lexemes find memories, how each weighs."""

    finding: tuple[str, ...]
    """The rarest lexemes: the memories that hold any of them are the ones ranked."""
    weights: dict[str, float]
    """Every lexeme the user's memories hold, with its BM25 inverse document frequency."""


def keyword_plan(
    counts: Mapping[str, int], total: int, *, max_docs: int, max_candidates: int
) -> KeywordPlan | None:
    """Plan a search from the number of memories holding each lexeme (``total``: all of them).

    Each lexeme weighs its BM25 idf, ``ln(1 + (total - n + 0.5) / (n + 0.5))``, so a word in
    few memories counts for more than a common one. Only the rarest lexemes find memories: the
    rarest one, if it is in at most ``max_docs`` memories (like SQLite, which leaves commoner
    words out), then the next rarest while the memories found stay within ``max_candidates``.
    So a search ranks at most ``max(max_docs, max_candidates)`` memories whatever the words,
    usually far fewer; the commoner words still add their (small) weight to the memories found.
    None when no lexeme matches, or when even the rarest is in more than ``max_docs`` memories.
    """
    present = sorted((n, term) for term, n in counts.items() if n > 0 and term)
    if not present or present[0][0] > max_docs:
        return None
    rarest, matches = present[0][1], present[0][0]
    finding = [rarest]
    for n, term in present[1:]:
        if n > max_docs or matches + n > max_candidates:
            break
        finding.append(term)
        matches += n
    documents = max(total, present[-1][0])
    weights = {term: math.log(1.0 + (documents - n + 0.5) / (n + 0.5)) for n, term in present}
    return KeywordPlan(tuple(finding), weights)


class _Upserts:
    """The INSERT ... ON CONFLICT statements, from the dialect's own ``insert`` construct."""

    def __init__(self, insert: Callable[[sa.Table], Any]) -> None:
        stmt = insert(users)
        new = stmt.excluded
        self.touch_user = stmt.on_conflict_do_update(
            index_elements=[users.c.user_key],
            set_={
                "display_name": new.display_name,
                "first_seen": sa.case(
                    (new.first_seen < users.c.first_seen, new.first_seen), else_=users.c.first_seen
                ),
                "last_seen": sa.case(
                    (new.last_seen > users.c.last_seen, new.last_seen), else_=users.c.last_seen
                ),
                "message_count": users.c.message_count + 1,
            },
        ).returning(*_USER_COLS)

        self.add_message = insert(messages).on_conflict_do_nothing(index_elements=[messages.c.id])

        stmt = insert(memories)
        new = stmt.excluded
        self.add_memories = stmt.on_conflict_do_update(
            index_elements=[memories.c.id],
            set_={
                "text": new.text,
                "kind": new.kind,
                "importance": new.importance,
                "platform": new.platform,
                "channel_id": new.channel_id,
                "source_message_ids": new.source_message_ids,
                "search_context": new.search_context,
                "updated_at": new.updated_at,
            },
            where=memories.c.user_key == new.user_key,  # an id never moves to another user
        )

        stmt = insert(settings)
        new = stmt.excluded
        self.set_setting = stmt.on_conflict_do_update(
            index_elements=[settings.c.scope, settings.c.key],
            set_={"value": new.value, "updated_at": new.updated_at},
        )


# --- the store ---------------------------------------------------------------------------


class SQLConversationStore:
    """The conversation store on SQLite or PostgreSQL, chosen by the DATABASE_URL's scheme."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 30.0,
        pool_size: int = 5,
        max_overflow: int = 10,
        busy_timeout_s: float = 5.0,
        keyword_max_docs: int = 2000,
        keyword_max_candidates: int = 500,
    ) -> None:
        self._kind, self._url = _parse(url)
        self._keyword_max_docs = keyword_max_docs
        self._keyword_max_candidates = keyword_max_candidates
        self._redacted = redact_url(self._url)
        self._service = "PostgreSQL" if self._kind == "postgresql" else "SQLite"
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool_size = pool_size
        self._max_overflow = max_overflow
        self._busy_timeout_s = busy_timeout_s
        self._upserts = _Upserts(postgresql.insert if self._kind == "postgresql" else sqlite.insert)
        self._engine: AsyncEngine | None = None
        self._auto: AsyncEngine | None = None
        # An in-memory SQLite database is one shared connection: calls take turns on it.
        self._serial: asyncio.Lock | None = None
        self._write_lock: asyncio.Lock | None = None

    @property
    def kind(self) -> DatabaseKind:
        return self._kind

    @property
    def engine(self) -> AsyncEngine:
        """The started engine, for tools that work on whole tables (backup, migrate, tests)."""
        if self._engine is None:
            raise StorageError("SQLConversationStore.start() has not been awaited")
        return self._engine

    # --- lifecycle -----------------------------------------------------------------------

    def _create_engine(self) -> AsyncEngine:
        if self._kind == "postgresql":
            return create_async_engine(
                self._url,
                pool_size=self._pool_size,
                max_overflow=self._max_overflow,
                pool_pre_ping=False,  # a dropped connection fails one call and resets the pool
                pool_recycle=1800,
                connect_args={
                    "timeout": self._connect_timeout_s,
                    "command_timeout": self._command_timeout_s,
                    "server_settings": {"application_name": "whisperengine"},
                },
            )
        database = self._url.database or ""
        memory = database in ("", ":memory:") or self._url.query.get("mode") == "memory"
        if memory:
            engine = create_async_engine(self._url, poolclass=StaticPool)
        else:
            path = Path(database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(
                self._url.set(database=str(path)), pool_size=self._pool_size, max_overflow=self._max_overflow
            )
        busy_ms = int(self._busy_timeout_s * 1000)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            # deleted rows are overwritten on disk, not left in free pages (forget_user)
            cursor.execute("PRAGMA secure_delete = ON")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        return engine

    async def start(self) -> None:
        """Connect and upgrade the schema to the newest migration."""
        if self._engine is not None:
            return
        engine: AsyncEngine | None = None
        try:
            engine = self._create_engine()  # creates a SQLite file's directory
            conn = await engine.connect()
        except (OSError, TimeoutError, sa_exc.DBAPIError) as exc:
            if engine is not None:
                await engine.dispose()
            raise BackendUnavailable(self._service, self._detail(exc), variable=_VARIABLE) from exc
        migrated = False
        try:
            async with conn.begin():
                if self._kind == "postgresql":  # one migrator at a time across processes
                    await conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                    )
                else:  # take the write lock now, so the DDL and its version row commit together
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                await conn.run_sync(upgrade_to_head)
            migrated = True
        except (OSError, TimeoutError, sa_exc.SQLAlchemyError, CommandError) as exc:
            raise StorageError(f"migrating {self._redacted} failed: {_reason(exc)}") from exc
        finally:
            await conn.close()
            if not migrated:
                await engine.dispose()
        self._engine = engine
        if self._kind == "sqlite" and isinstance(engine.pool, StaticPool):
            self._serial = asyncio.Lock()
        elif self._kind == "sqlite":
            self._write_lock = asyncio.Lock()
        self._auto = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if self._kind == "postgresql" else engine
        )
        logger.info("conversation store ready: %s", self._redacted)

    async def aclose(self) -> None:
        engine, self._engine, self._auto, self._serial, self._write_lock = (
            self._engine,
            None,
            None,
            None,
            None,
        )
        if engine is not None:
            await engine.dispose()

    async def ping(self) -> None:
        """``SELECT 1``; BackendUnavailable when the database cannot answer."""
        try:
            async with self._connect("ping", single=True) as conn:
                await conn.execute(sa.text("SELECT 1"))
        except StorageError as exc:
            raise BackendUnavailable(self._service, str(exc), variable=_VARIABLE) from exc

    # --- plumbing ------------------------------------------------------------------------

    def _detail(self, exc: BaseException) -> str:
        detail = f"cannot use {self._redacted}: {_reason(exc)}"
        if self._url.password:
            detail = detail.replace(self._url.password, "***")
        return detail

    @asynccontextmanager
    async def _connect(
        self, operation: str, *, single: bool, write: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A pooled connection with errors converted; ``single``: one statement (autocommit on PG).

        SQLite has one writer at a time. Writers of this process queue on an asyncio lock
        instead of meeting SQLite's busy handler, which sleeps in steps of up to 100 ms.
        """
        engine = self._auto if single else self._engine
        if engine is None:
            raise StorageError(f"{operation}: SQLConversationStore.start() has not been awaited")
        turn: AbstractAsyncContextManager[Any] = self._serial or (
            self._write_lock if write and self._write_lock is not None else nullcontext()
        )
        try:
            async with turn, engine.connect() as conn:
                yield conn
        except (OSError, TimeoutError) as exc:
            raise BackendUnavailable(self._service, self._detail(exc), variable=_VARIABLE) from exc
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError) or _cannot_serve(exc):
                raise BackendUnavailable(self._service, self._detail(exc), variable=_VARIABLE) from exc
            raise StorageError(f"{operation} failed: {_reason(exc)}") from exc
        except sa_exc.SQLAlchemyError as exc:
            raise StorageError(f"{operation} failed: {_reason(exc)}") from exc

    # --- users ---------------------------------------------------------------------------

    async def touch_user(
        self, user_key: str, *, platform: str, user_id: str, display_name: str, seen_at: datetime
    ) -> UserProfile:
        """Create the user or update name/last_seen, incrementing message_count."""
        _require_aware(seen_at, "seen_at")
        params = {
            "user_key": user_key,
            "platform": platform,
            "user_id": user_id,
            "display_name": display_name,
            "first_seen": seen_at,
            "last_seen": seen_at,
            "message_count": 1,
        }
        async with self._connect("touch_user", single=True, write=True) as conn:
            row = (await conn.execute(self._upserts.touch_user, params)).one()
            await conn.commit()
        return UserProfile(*row)

    async def get_user(self, user_key: str) -> UserProfile | None:
        async with self._connect("get_user", single=True) as conn:
            row = (await conn.execute(_GET_USER, {"user_key": user_key})).first()
        return None if row is None else UserProfile(*row)

    async def set_preferred_name(self, user_key: str, name: str | None) -> bool:
        """Set (``None``: clear) what the user likes to be called; False when the user is unknown."""
        async with self._connect("set_preferred_name", single=True, write=True) as conn:
            result = await conn.execute(_SET_PREFERRED_NAME, {"b_user_key": user_key, "name": name})
            await conn.commit()
        return bool(result.rowcount)

    # --- messages ------------------------------------------------------------------------

    async def add_message(self, message: StoredMessage) -> None:
        """Store one turn; writing the same ``id`` again changes nothing."""
        _require_aware(message.created_at, "created_at")
        params = {f.name: getattr(message, f.name) for f in fields(StoredMessage)}
        async with self._connect("add_message", single=True, write=True) as conn:
            await conn.execute(self._upserts.add_message, params)
            await conn.commit()

    async def write_batch(self, batch: WriteBatch) -> None:
        """Messages, new memories and memories used, in one transaction."""
        if not batch:
            return
        for message in batch.messages:
            _require_aware(message.created_at, "created_at")
        used = {owner: list(dict.fromkeys(ids)) for owner, ids in batch.used.items() if ids}
        if used:
            if batch.used_at is None:
                raise ValueError("used_at is required when memories are marked used")
            _require_aware(batch.used_at, "used_at")
        rows = self._memory_rows(batch.memories)
        async with self._connect("write_batch", single=False, write=True) as conn:
            if batch.messages:
                params = [{f.name: getattr(m, f.name) for f in fields(StoredMessage)} for m in batch.messages]
                await conn.execute(self._upserts.add_message, params)
            if rows:
                await conn.execute(self._upserts.add_memories, rows)
            for owner, ids in used.items():
                for chunk in _chunks(ids):
                    await conn.execute(_MARK_USED, {"owner": owner, "ids": chunk, "at": batch.used_at})
            await conn.commit()

    async def recent_messages(self, conversation_key: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation, oldest first."""
        if limit <= 0:
            return []
        async with self._connect("recent_messages", single=True) as conn:
            rows = (await conn.execute(_RECENT, {"key": conversation_key, "limit": limit})).all()
        return [StoredMessage(*row) for row in reversed(rows)]

    async def user_messages(self, user_key: str, limit: int = 1000) -> list[StoredMessage]:
        """Messages written by, or replied to, this user: the oldest ``limit``, oldest first."""
        if limit <= 0:
            return []
        async with self._connect("user_messages", single=True) as conn:
            rows = (await conn.execute(_USER_MESSAGES, {"user_key": user_key, "limit": limit})).all()
        return [StoredMessage(*row) for row in rows]

    # --- memories ------------------------------------------------------------------------

    async def add_memories(self, memories: Sequence[MemoryRecord]) -> None:
        """Insert memories, or update the text and metadata of the owner's existing ids.

        An id that already belongs to another user is left untouched.
        """
        if not memories:
            return
        rows = self._memory_rows(memories)
        async with self._connect("add_memories", single=len(rows) == 1, write=True) as conn:
            await conn.execute(self._upserts.add_memories, rows)
            await conn.commit()

    @staticmethod
    def _memory_rows(memories: Sequence[MemoryRecord]) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        rows = []
        for memory in memories:
            _require_aware(memory.created_at, "created_at")
            rows.append(
                {
                    "id": memory.id,
                    "user_key": memory.user_key,
                    "text": memory.text,
                    "kind": memory.kind,
                    "importance": float(memory.importance),
                    "platform": memory.platform,
                    "channel_id": memory.channel_id,
                    "source_message_ids": list(memory.source_message_ids),
                    "search_context": memory.search_context,
                    "created_at": memory.created_at,
                    "updated_at": now,
                    "use_count": 0,
                }
            )
        return rows

    async def get_memories(self, user_key: str, ids: Sequence[str]) -> list[MemoryRecord]:
        """The user's memories with these ids, in the order of ``ids``; others' ids are skipped."""
        if not ids:
            return []
        found: dict[str, MemoryRecord] = {}
        async with self._connect("get_memories", single=True) as conn:
            for chunk in _chunks(ids):
                result = await conn.execute(_GET_MEMORIES, {"user_key": user_key, "ids": chunk})
                for row in result:
                    record = _memory(row)
                    found[record.id] = record
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    async def list_memories(self, user_key: str, limit: int = 100, offset: int = 0) -> list[MemoryRecord]:
        """Newest first."""
        if limit <= 0:
            return []
        params = {"user_key": user_key, "limit": limit, "offset": max(offset, 0)}
        async with self._connect("list_memories", single=True) as conn:
            rows = (await conn.execute(_LIST_MEMORIES, params)).all()
        return [_memory(row) for row in rows]

    async def count_memories(self, user_key: str) -> int:
        async with self._connect("count_memories", single=True) as conn:
            return int((await conn.execute(_COUNT_MEMORIES, {"user_key": user_key})).scalar_one())

    async def delete_memories(self, user_key: str, ids: Sequence[str]) -> int:
        """Delete the user's memories with these ids; returns how many were deleted."""
        if not ids:
            return 0
        deleted = 0
        async with self._connect("delete_memories", single=False, write=True) as conn:
            for chunk in _chunks(ids):
                deleted += (
                    await conn.execute(_DELETE_MEMORIES, {"user_key": user_key, "ids": chunk})
                ).rowcount
            await conn.commit()
        return deleted

    async def keyword_search(self, user_key: str, query: str, k: int) -> list[tuple[MemoryRecord, float]]:
        """The user's ``k`` memories that best match the words of ``query``, best first.

        Any word may match (OR); both backends rank BM25-like (a rare word counts for more than
        a common one; more matched words, more often, rank higher): SQLite with FTS5 ``bm25()``,
        PostgreSQL with BM25 weights from ``memory_terms`` (see :func:`keyword_plan`). The score
        is higher for a better match and comparable only within one call. Words found in more
        than ``keyword_max_docs`` memories do not find memories by themselves (on PostgreSQL,
        words past the rarest one find memories only while those stay within
        ``keyword_max_candidates``), so a search's cost stays bounded however many memories a
        user has. Query syntax in ``query`` is never interpreted: see :func:`keyword_terms`.
        """
        terms = keyword_terms(query)
        if k <= 0 or not terms:
            return []
        async with self._connect("keyword_search", single=True) as conn:
            if self._kind == "postgresql":
                rows = await self._pg_keyword_search(conn, user_key, terms, k)
            else:
                terms = await self._distinctive_terms(conn, terms)
                if not terms:
                    return []
                params = {"user_key": user_key, "query": fts5_query(terms), "k": k}
                rows = (await conn.execute(_SQLITE_KEYWORD_SEARCH, params)).all()
        return [(_memory(row), float(row._mapping["score"])) for row in rows]

    async def _pg_keyword_search(
        self, conn: AsyncConnection, user_key: str, terms: Sequence[str], k: int
    ) -> Sequence[sa.Row[Any]]:
        """Two statements: the terms' counts (index lookups), then BM25 over what they find."""
        params = {"user_key": user_key, "words": " ".join(terms)}
        counts = {row.term: row.memories for row in await conn.execute(_PG_TERM_COUNTS, params)}
        plan = keyword_plan(
            counts,
            counts.pop("", 0),
            max_docs=self._keyword_max_docs,
            max_candidates=self._keyword_max_candidates,
        )
        if plan is None:
            return []
        ranked: dict[str, Any] = {"user_key": user_key, "finding": tsquery(plan.finding), "k": k}
        for i, (term, weight) in enumerate(plan.weights.items()):
            ranked[f"q{i}"] = tsquery([term])
            ranked[f"w{i}"] = weight
        return (await conn.execute(_pg_keyword_search(len(plan.weights)), ranked)).all()

    async def _distinctive_terms(self, conn: AsyncConnection, terms: Sequence[str]) -> list[str]:
        """The terms found in at most ``keyword_max_docs`` memories (SQLite).

        FTS5 ranks every memory that matches any term, so one common word ("work", "today")
        in a large table would make each search rank tens of thousands of rows. Such a word
        says little about any one memory (BM25 gives it almost no weight), so it is left out;
        counting stops at the cap, so asking costs at most ``keyword_max_docs`` index entries
        per term, all in one statement.
        """
        cap = self._keyword_max_docs
        counts = ", ".join(
            f"(SELECT count(*) FROM (SELECT 1 FROM memories_fts WHERE memories_fts MATCH :t{i} LIMIT :cap))"
            for i in range(len(terms))
        )
        params: dict[str, Any] = {f"t{i}": fts5_query([term]) for i, term in enumerate(terms)}
        row = (await conn.execute(sa.text(f"SELECT {counts}"), {**params, "cap": cap + 1})).one()
        return [term for term, docs in zip(terms, row, strict=True) if docs <= cap]

    # --- memory care (engine/memory_care.py, engine/compaction.py) -------------------------

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
        """The user said it again: importance up (capped at ``max_importance``), ``mentions``
        + 1, ``source_message_id`` added to the sources (once), ``updated_at = at``.

        None when the user has no memory with this id (another user's id is never touched).
        """
        _require_aware(at, "at")
        params = {"owner": user_key, "memory": memory_id}
        async with self._connect("reinforce_memory", single=False, write=True) as conn:
            row = (await conn.execute(_STATE_FOR_UPDATE, params)).first()
            if row is None:
                await conn.rollback()
                return None
            state = _state(row)
            sources = list(dict.fromkeys((*state.source_message_ids, source_message_id)))
            importance = max(min(state.importance + importance_delta, max_importance), state.importance)
            await conn.execute(
                _REINFORCE, {**params, "new_importance": importance, "sources": sources, "at": at}
            )
            row = (await conn.execute(_STATE_FOR_UPDATE, params)).one()
            await conn.commit()
        return _state(row)

    async def supersede_memory(
        self, user_key: str, memory_id: str, *, superseded_by: str, at: datetime
    ) -> bool:
        """Mark the user's memory as replaced by the newer ``superseded_by`` (kept as history)."""
        _require_aware(at, "at")
        params = {"owner": user_key, "memory": memory_id, "replacement": superseded_by, "at": at}
        async with self._connect("supersede_memory", single=True, write=True) as conn:
            changed = (await conn.execute(_SUPERSEDE, params)).rowcount
            await conn.commit()
        return bool(changed)

    async def mark_memories_used(self, user_key: str, ids: Sequence[str], *, at: datetime) -> int:
        """``use_count`` + 1 and ``last_used_at = at`` on the user's memories with these ids."""
        _require_aware(at, "at")
        if not ids:
            return 0
        changed = 0
        async with self._connect("mark_memories_used", single=False, write=True) as conn:
            for chunk in _chunks(ids):
                changed += (
                    await conn.execute(_MARK_USED, {"owner": user_key, "ids": chunk, "at": at})
                ).rowcount
            await conn.commit()
        return changed

    async def memory_states(self, user_key: str, ids: Sequence[str] | None = None) -> list[MemoryState]:
        """The care fields of the user's memories: these ids (in that order), or all, oldest first."""
        async with self._connect("memory_states", single=True) as conn:
            if ids is None:
                return [_state(row) for row in await conn.execute(_ALL_STATES, {"user_key": user_key})]
            found: dict[str, MemoryState] = {}
            for chunk in _chunks(ids):
                for row in await conn.execute(_STATES, {"user_key": user_key, "ids": chunk}):
                    state = _state(row)
                    found[state.id] = state
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    async def stale_memories(
        self, *, idle_before: datetime, max_importance: float, max_mentions: int, after_id: str, limit: int
    ) -> list[MemoryState]:
        """Memories of every user not written or used since ``idle_before``, with importance below
        ``max_importance`` and at most ``max_mentions`` mentions, id > ``after_id``, by id."""
        _require_aware(idle_before, "idle_before")
        if limit <= 0:
            return []
        params = {
            "idle_before": idle_before,
            "max_importance": max_importance,
            "max_mentions": max_mentions,
            "after_id": after_id,
            "limit": limit,
        }
        async with self._connect("stale_memories", single=True) as conn:
            return [_state(row) for row in await conn.execute(_STALE, params)]

    async def conversation_spans(
        self, *, before: datetime, after: tuple[str, str] | None, limit: int
    ) -> list[ConversationSpan]:
        """Each (user_key, conversation_key) with messages older than ``before``, with the newest
        of them; ordered by that pair, pairs after ``after`` only, at most ``limit``.

        A scan of the messages older than ``before`` (there is no index on time alone); the
        memory-care job asks once per run.
        """
        _require_aware(before, "before")
        if limit <= 0:
            return []
        after_user, after_conversation = after or ("", "")
        params = {
            "before": before,
            "after_user": after_user,
            "after_conversation": after_conversation,
            "limit": limit,
        }
        async with self._connect("conversation_spans", single=True) as conn:
            rows = (await conn.execute(_SPANS, params)).all()
        return [ConversationSpan(user_key, key, newest) for user_key, key, newest in rows]

    async def conversation_messages(
        self, user_key: str, conversation_key: str, *, after: datetime | None, limit: int
    ) -> list[StoredMessage]:
        """The user's messages (and the replies to them) in a conversation created after
        ``after`` (all without it): the oldest ``limit``, oldest first."""
        if after is not None:
            _require_aware(after, "after")
        if limit <= 0:
            return []
        params = {
            "user_key": user_key,
            "conversation_key": conversation_key,
            "after": after or _EPOCH,
            "limit": limit,
        }
        async with self._connect("conversation_messages", single=True) as conn:
            rows = (await conn.execute(_CONVERSATION_MESSAGES, params)).all()
        return [StoredMessage(*row) for row in rows]

    # --- settings ------------------------------------------------------------------------

    async def get_setting(self, scope: str, key: str) -> JSONValue | None:
        async with self._connect("get_setting", single=True) as conn:
            return (await conn.execute(_GET_SETTING, {"scope": scope, "key": key})).scalar_one_or_none()

    async def set_setting(self, scope: str, key: str, value: JSONValue) -> None:
        params = {"scope": scope, "key": key, "value": value, "updated_at": datetime.now(UTC)}
        async with self._connect("set_setting", single=True, write=True) as conn:
            await conn.execute(self._upserts.set_setting, params)
            await conn.commit()

    async def delete_setting(self, scope: str, key: str) -> None:
        async with self._connect("delete_setting", single=True, write=True) as conn:
            await conn.execute(_DELETE_SETTING, {"scope": scope, "key": key})
            await conn.commit()

    async def settings_with_key(
        self, key: str, *, after_scope: str = "", limit: int = 500
    ) -> list[tuple[str, JSONValue]]:
        """One page of ``(scope, value)`` of every scope that has setting ``key``, in scope order."""
        if limit <= 0:
            return []
        params = {"key": key, "after_scope": after_scope, "limit": limit}
        async with self._connect("settings_with_key", single=True) as conn:
            return [(row.scope, row.value) for row in await conn.execute(_SETTINGS_WITH_KEY, params)]

    # --- vector outbox (storage.vector.outbox.VectorOutbox) ---------------------------------

    async def enqueue_vector_op(self, scope: str, op: OutboxOp, payload: Mapping[str, Any]) -> int:
        """Append one vector-store write to the outbox; returns its id (ids grow with each append)."""
        row = {"scope": scope, "op": op, "payload": dict(payload), "created_at": datetime.now(UTC)}
        async with self._connect("enqueue_vector_op", single=True, write=True) as conn:
            new_id = (await conn.execute(_OUTBOX_INSERT, row)).scalar_one()
            await conn.commit()
        return int(new_id)

    async def vector_outbox_batch(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` queued vector-store writes, oldest first."""
        if limit <= 0:
            return []
        async with self._connect("vector_outbox_batch", single=True) as conn:
            rows = await conn.execute(_OUTBOX_BATCH, {"limit": limit})
            return [OutboxEntry(int(r.id), r.scope, r.op, r.payload, r.created_at) for r in rows]

    async def delete_vector_outbox(self, ids: Sequence[int]) -> int:
        """Remove applied writes from the outbox; returns how many rows went."""
        if not ids:
            return 0
        async with self._connect("delete_vector_outbox", single=True, write=True) as conn:
            removed = (await conn.execute(_OUTBOX_DELETE, {"ids": list(ids)})).rowcount
            await conn.commit()
        return int(removed)

    async def delete_vector_outbox_scope(self, scope: str) -> int:
        """Remove every queued write of ``scope`` (its vectors are being dropped anyway)."""
        async with self._connect("delete_vector_outbox_scope", single=True, write=True) as conn:
            removed = (await conn.execute(_OUTBOX_DELETE_SCOPE, {"scope": scope})).rowcount
            await conn.commit()
        return int(removed)

    async def count_vector_outbox(self) -> int:
        async with self._connect("count_vector_outbox", single=True) as conn:
            return int((await conn.execute(_OUTBOX_COUNT)).scalar_one())

    # --- erasure -------------------------------------------------------------------------

    async def forget_user(self, user_key: str) -> int:
        """Erase the user's profile, messages, memories and settings; returns rows removed.

        Messages go by ``user_key``, which the engine also gives the assistant's replies to the
        user; settings go where the scope is the user_key. One transaction.
        """
        removed = 0
        async with self._connect("forget_user", single=False, write=True) as conn:
            for statement in _FORGET:
                removed += (await conn.execute(statement, {"user_key": user_key})).rowcount
            if self._kind == "sqlite":
                # FTS5 only marks deleted rows; merging the index drops their words for good
                await conn.execute(_FTS_OPTIMIZE)
            await conn.commit()
        logger.info("forgot user %s: %d rows removed", user_key, removed)
        return removed

    # --- linking accounts --------------------------------------------------------------

    async def merge_users(self, source: str, target: str) -> MergedUser:
        """Give everything of user ``source`` to user ``target`` in one transaction.

        Messages and memories change owner (their ids, texts and care fields kept, so the
        keyword index needs no rewrite); the profiles combine: message counts summed, the
        earliest first_seen and latest last_seen, target's names (source's preferred name when
        target has none); without a target profile, source's is renamed (its platform and
        user_id taken from the target key). Settings scoped to source move to target, except
        keys target already has. Merging a user with nothing left is a no-op.
        """
        if source == target:
            raise ValueError("cannot merge a user into itself")
        keys = {"source": source, "target": target}
        async with self._connect("merge_users", single=False, write=True) as conn:
            memory_ids = tuple((await conn.execute(_MERGE_MEMORY_IDS, keys)).scalars())
            moved_messages = (await conn.execute(_MERGE_MESSAGES, keys)).rowcount
            await conn.execute(_MERGE_MEMORIES, keys)
            await conn.execute(_MERGE_DROP_SHADOWED_SETTINGS, keys)
            moved_settings = (await conn.execute(_MERGE_SETTINGS, keys)).rowcount
            row = (await conn.execute(_SOURCE_PROFILE, keys)).first()
            if row is not None:
                profile = UserProfile(*row)
                if (await conn.execute(_TARGET_EXISTS, keys)).first() is None:
                    platform, _, user_id = target.partition(":")
                    await conn.execute(
                        _RENAME_PROFILE, {**keys, "new_platform": platform, "new_user_id": user_id}
                    )
                else:
                    await conn.execute(
                        _MERGE_PROFILE,
                        {
                            **keys,
                            "count": profile.message_count,
                            "first": profile.first_seen,
                            "last": profile.last_seen,
                            "name": profile.preferred_name,
                        },
                    )
                    await conn.execute(_DROP_SOURCE_PROFILE, keys)
            await conn.commit()
        logger.info(
            "merged user %s into %s: %d messages, %d memories, %d settings",
            source,
            target,
            moved_messages,
            len(memory_ids),
            moved_settings,
        )
        return MergedUser(
            messages=moved_messages, memory_ids=memory_ids, settings=moved_settings, profile=row is not None
        )


__all__ = [
    "MIGRATIONS_DIR",
    "STOPWORDS",
    "DatabaseKind",
    "KeywordPlan",
    "SQLConversationStore",
    "alembic_config",
    "database_kind",
    "fts5_query",
    "keyword_plan",
    "keyword_terms",
    "redact_url",
    "sqlalchemy_url",
    "tsquery",
    "upgrade_to_head",
]
