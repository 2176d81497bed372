"""The conversation store on SQLite or PostgreSQL: one schema, Alembic migrations."""

from storage.sql.store import SQLConversationStore, database_kind

__all__ = ["SQLConversationStore", "database_kind"]
