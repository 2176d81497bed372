"""Initial schema: users, messages, memories, settings.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

``messages`` and ``memories`` carry an integer ``seq`` primary key (SQLite: the rowid itself)
next to the engine's unique string ``id``, so a later revision can add an external-content
FTS5 table (``content_rowid='seq'``) or a tsvector column and GIN index without rebuilding them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types in storage/sql/schema.py as of this revision.
_TS = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("platform", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("preferred_name", sa.Text(), nullable=True),
        sa.Column("first_seen", _TS, nullable=False),
        sa.Column("last_seen", _TS, nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("user_key", name="pk_users"),
    )
    op.create_table(
        "messages",
        sa.Column("seq", _SEQ, nullable=False, autoincrement=True),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("conversation_key", sa.Text(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("user_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("platform", sa.Text(), nullable=False),
        sa.Column("channel_id", sa.Text(), nullable=False),
        sa.Column("guild_id", sa.Text(), nullable=True),
        sa.Column("thread_id", sa.Text(), nullable=True),
        sa.Column("platform_message_id", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_messages"),
        sa.UniqueConstraint("id", name="uq_messages_id"),
    )
    op.create_index(
        "ix_messages_conversation_key_created_at", "messages", ["conversation_key", "created_at", "seq"]
    )
    op.create_index("ix_messages_user_key_created_at", "messages", ["user_key", "created_at", "seq"])
    op.create_table(
        "memories",
        sa.Column("seq", _SEQ, nullable=False, autoincrement=True),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False, server_default="message"),
        sa.Column("importance", sa.Float(), nullable=False, server_default="0.5"),
        sa.Column("platform", sa.Text(), nullable=False, server_default=""),
        sa.Column("channel_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("source_message_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.Column("use_count", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("seq", name="pk_memories"),
        sa.UniqueConstraint("id", name="uq_memories_id"),
    )
    op.create_index("ix_memories_user_key_created_at", "memories", ["user_key", "created_at", "seq"])
    op.create_table(
        "settings",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_settings"),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_index("ix_memories_user_key_created_at", table_name="memories")
    op.drop_table("memories")
    op.drop_index("ix_messages_user_key_created_at", table_name="messages")
    op.drop_index("ix_messages_conversation_key_created_at", table_name="messages")
    op.drop_table("messages")
    op.drop_table("users")
