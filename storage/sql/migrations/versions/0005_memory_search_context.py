"""Keyword search also over a memory's context: what it answered, and when it was said.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 00:00:00

``memories.search_context``: words that help find a memory but are not the memory itself: the
date it was said ("8 May 2023") and the turn it followed in the conversation ("Melanie: How
was the concert?"). A reply such as "Yes, it was amazing!" is found by the question it answered.
Measured on LoCoMo dev (BM25 alone): any@5 0.591 over the text, 0.712 with the context at half
weight.

SQLite: ``memories_fts`` is rebuilt with two columns, ``text`` and ``search_context`` (external
content over ``memories``), its triggers follow both, and search ranks with
``bm25(memories_fts, 1.0, 0.5)``. PostgreSQL: ``text_search`` becomes
``setweight(to_tsvector(text), 'A') || setweight(to_tsvector(search_context), 'B')``
(``ts_rank_cd`` weighs B at 0.4 of A).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGERS = ("memories_fts_update", "memories_fts_delete", "memories_fts_insert")


def _sqlite_fts(columns: Sequence[str], update_of: str) -> tuple[str, ...]:
    cols = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    return (
        f"CREATE VIRTUAL TABLE memories_fts USING fts5({cols}, content='memories', content_rowid='seq', "
        "tokenize='porter unicode61 remove_diacritics 2')",
        "CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN "
        f"INSERT INTO memories_fts(rowid, {cols}) VALUES (new.seq, {new}); END",
        "CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN "
        f"INSERT INTO memories_fts(memories_fts, rowid, {cols}) VALUES ('delete', old.seq, {old}); END",
        f"CREATE TRIGGER memories_fts_update AFTER UPDATE OF {update_of} ON memories BEGIN "
        f"INSERT INTO memories_fts(memories_fts, rowid, {cols}) VALUES ('delete', old.seq, {old}); "
        f"INSERT INTO memories_fts(rowid, {cols}) VALUES (new.seq, {new}); END",
        "INSERT INTO memories_fts(memories_fts) VALUES ('rebuild')",
    )


def _sqlite_drop_fts() -> None:
    for trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS memories_fts")


def _postgres_text_search(expression: str) -> None:
    op.drop_index("ix_memories_text_search", table_name="memories")
    op.drop_column("memories", "text_search")
    op.add_column(
        "memories",
        sa.Column(
            "text_search", postgresql.TSVECTOR(), sa.Computed(expression, persisted=True), nullable=True
        ),
    )
    op.create_index("ix_memories_text_search", "memories", ["text_search"], postgresql_using="gin")


def upgrade() -> None:
    op.add_column("memories", sa.Column("search_context", sa.Text, nullable=False, server_default=""))
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        _sqlite_drop_fts()
        for statement in _sqlite_fts(("text", "search_context"), "text, search_context"):
            op.execute(statement)
    elif dialect == "postgresql":
        _postgres_text_search(
            "setweight(to_tsvector('english'::regconfig, text), 'A') || "
            "setweight(to_tsvector('english'::regconfig, search_context), 'B')"
        )


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        _sqlite_drop_fts()
        for statement in _sqlite_fts(("text",), "text"):
            op.execute(statement)
    elif dialect == "postgresql":
        _postgres_text_search("to_tsvector('english'::regconfig, text)")
    op.drop_column("memories", "search_context")
