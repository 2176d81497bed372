"""The conversation store's tables: one schema for SQLite and PostgreSQL.

This module describes the schema the migrations in ``migrations/versions`` produce; a contract
test checks that the two agree on both backends. Change the schema by adding a migration and
updating these definitions together, never one without the other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no timezone type, so the value is stored as
    naive UTC text (fixed width, so it sorts chronologically) and read back as aware UTC.
    Naive datetimes are refused rather than guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC timestamps")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


# SQLite makes only a column declared exactly "INTEGER PRIMARY KEY" an alias of the rowid, which
# is what keeps row numbers stable (VACUUM) for an external-content FTS5 index; PostgreSQL gets
# a BIGSERIAL. ``seq`` orders rows written in the same instant.
RowSeq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_key", sa.Text, primary_key=True),
    sa.Column("platform", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False, server_default=""),
    sa.Column("preferred_name", sa.Text, nullable=True),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("seq", RowSeq, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("conversation_key", sa.Text, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("user_name", sa.Text, nullable=False, server_default=""),
    sa.Column("platform", sa.Text, nullable=False),
    sa.Column("channel_id", sa.Text, nullable=False),
    sa.Column("guild_id", sa.Text, nullable=True),
    sa.Column("thread_id", sa.Text, nullable=True),
    sa.Column("platform_message_id", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_messages_conversation_key_created_at", "conversation_key", "created_at", "seq"),
    sa.Index("ix_messages_user_key_created_at", "user_key", "created_at", "seq"),
)

memories = sa.Table(
    "memories",
    metadata,
    sa.Column("seq", RowSeq, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False, server_default="message"),
    sa.Column("importance", sa.Float, nullable=False, server_default="0.5"),
    sa.Column("platform", sa.Text, nullable=False, server_default=""),
    sa.Column("channel_id", sa.Text, nullable=False, server_default=""),
    sa.Column("source_message_ids", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("use_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("superseded_by", sa.Text, nullable=True),  # 0003: the newer memory that replaced it
    sa.Column("mentions", sa.Integer, nullable=False, server_default="1"),  # 0003: times said
    sa.Column("search_context", sa.Text, nullable=False, server_default=""),  # 0005: keyword-only words
    sa.Index("ix_memories_user_key_created_at", "user_key", "created_at", "seq"),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("scope", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# 0004: vector-store writes waiting for the vector store to come back, replayed in id order.
vector_outbox = sa.Table(
    "vector_outbox",
    metadata,
    sa.Column("id", RowSeq, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("op", sa.Text, nullable=False),  # add | delete | drop_scope
    sa.Column("payload", sa.JSON, nullable=False),  # ids, texts, embeddings, metadatas
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_vector_outbox_scope", "scope"),
)

# Keyword search over ``memories.text`` (migration 0002) lives outside this metadata because it
# differs per dialect: SQLite has the FTS5 table ``memories_fts`` (plus FTS5's own shadow tables
# ``memories_fts_*``) kept in step by triggers; PostgreSQL a stored generated ``tsvector`` column
# ``memories.text_search`` with the GIN index ``ix_memories_text_search``, and (migration 0006)
# the table ``memory_terms`` of per-user term counts kept in step by triggers. Schema comparisons
# (Alembic autogenerate, the contract test) leave these objects out with ``include_object``;
# backups leave them out too, since the database derives them from ``memories``.
KEYWORD_SEARCH_TABLE = "memories_fts"
KEYWORD_SEARCH_COLUMN = "text_search"
KEYWORD_SEARCH_INDEX = "ix_memories_text_search"
KEYWORD_TERMS_TABLE = "memory_terms"


def is_keyword_search_object(name: str | None, type_: str) -> bool:
    """Whether a reflected schema object belongs to the dialect-specific keyword search."""
    if name is None:
        return False
    if type_ == "table":
        if name == KEYWORD_TERMS_TABLE:
            return True
        return name == KEYWORD_SEARCH_TABLE or name.startswith(KEYWORD_SEARCH_TABLE + "_")
    if type_ == "column":
        return name == KEYWORD_SEARCH_COLUMN
    if type_ == "index":
        return name == KEYWORD_SEARCH_INDEX
    return False


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic ``include_object`` hook: compare everything but the keyword-search objects."""
    return not is_keyword_search_object(name, type_)


__all__ = [
    "KEYWORD_SEARCH_COLUMN",
    "KEYWORD_SEARCH_INDEX",
    "KEYWORD_SEARCH_TABLE",
    "KEYWORD_TERMS_TABLE",
    "NAMING_CONVENTION",
    "UTCDateTime",
    "include_object",
    "is_keyword_search_object",
    "memories",
    "messages",
    "metadata",
    "settings",
    "users",
    "vector_outbox",
]
