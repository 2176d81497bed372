"""Memory care: contradiction history and mention counts on ``memories``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 00:00:00

``superseded_by``: the id of the newer memory that contradicted this one (NULL while it is
current); superseded memories stay in the table as history but are left out of recall.
``mentions``: how many times the user said it (1 when written; a near-duplicate adds one).

Both are plain ``ADD COLUMN``/``DROP COLUMN`` (SQLite >= 3.35 drops a column in place), so the
SQLite table is never rebuilt and the FTS5 triggers of 0002 stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("memories", sa.Column("superseded_by", sa.Text, nullable=True))
    op.add_column("memories", sa.Column("mentions", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    op.drop_column("memories", "mentions")
    op.drop_column("memories", "superseded_by")
