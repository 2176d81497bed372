"""Vector outbox: memory writes kept in the primary database while the vector store is down.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 00:00:00

``vector_outbox`` holds one row per vector-store write that could not be made (``op`` = ``add``,
``delete`` or ``drop_scope`` on ``scope``; ``payload`` the JSON of its ids, texts, embeddings and
metadata), replayed in ``id`` order by ``storage.vector.outbox.DurableVectorMemory`` once the
vector store answers again, and deleted as it is applied.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types in storage/sql/schema.py as of this revision.
_TS = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "vector_outbox",
        sa.Column("id", _SEQ, nullable=False, autoincrement=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("op", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_vector_outbox"),
    )
    op.create_index("ix_vector_outbox_scope", "vector_outbox", ["scope"])


def downgrade() -> None:
    op.drop_index("ix_vector_outbox_scope", table_name="vector_outbox")
    op.drop_table("vector_outbox")
