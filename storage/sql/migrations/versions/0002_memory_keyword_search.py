"""Keyword search over memories: SQLite FTS5, PostgreSQL tsvector + GIN.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 00:00:00

SQLite: ``memories_fts``, an external-content FTS5 table over ``memories.text`` keyed by
``memories.seq`` (the rowid), tokenizer ``porter unicode61 remove_diacritics 2`` (Porter stemming:
"painted" finds "paint"; measured on LoCoMo dev, BM25 any@5 0.582 with it, 0.561 without), kept
in step with ``memories`` by three triggers, so
every writer (upsert, delete, forget) updates it in the same transaction. Ranked with ``bm25()``.
A later SQLite migration that rebuilds ``memories`` (batch mode copies the table) must drop the
triggers first and recreate them plus ``INSERT INTO memories_fts(memories_fts) VALUES('rebuild')``.

PostgreSQL: a stored generated column ``text_search = to_tsvector('english', text)`` (Snowball
stemming, the counterpart of SQLite's Porter tokenizer; names are stemmed alike on both sides of a
match) with a GIN index; ranked with ``ts_rank_cd``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_UP = (
    "CREATE VIRTUAL TABLE memories_fts USING fts5("
    "text, content='memories', content_rowid='seq', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN "
    "INSERT INTO memories_fts(rowid, text) VALUES (new.seq, new.text); END",
    "CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN "
    "INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.seq, old.text); END",
    "CREATE TRIGGER memories_fts_update AFTER UPDATE OF text ON memories BEGIN "
    "INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.seq, old.text); "
    "INSERT INTO memories_fts(rowid, text) VALUES (new.seq, new.text); END",
    "INSERT INTO memories_fts(memories_fts) VALUES ('rebuild')",
)
_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS memories_fts_update",
    "DROP TRIGGER IF EXISTS memories_fts_delete",
    "DROP TRIGGER IF EXISTS memories_fts_insert",
    "DROP TABLE IF EXISTS memories_fts",
)


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for statement in _SQLITE_UP:
            op.execute(statement)
    elif dialect == "postgresql":
        op.add_column(
            "memories",
            sa.Column(
                "text_search",
                postgresql.TSVECTOR(),
                sa.Computed("to_tsvector('english'::regconfig, text)", persisted=True),
                nullable=True,
            ),
        )
        op.create_index("ix_memories_text_search", "memories", ["text_search"], postgresql_using="gin")
    else:  # pragma: no cover - the store accepts only these two
        raise NotImplementedError(f"keyword search is not available on {dialect}")


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for statement in _SQLITE_DOWN:
            op.execute(statement)
    elif dialect == "postgresql":
        op.drop_index("ix_memories_text_search", table_name="memories")
        op.drop_column("memories", "text_search")
