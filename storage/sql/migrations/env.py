"""Alembic environment of the conversation store.

``SQLConversationStore.start()`` runs it through ``storage.sql.store.upgrade_to_head`` with the
store's own connection in ``config.attributes["connection"]``. Run by hand, it reads the URL
from the ``sqlalchemy.url`` option or DATABASE_URL, e.g.::

    python -c "from alembic import command; from storage.sql.store import alembic_config; \\
        command.upgrade(alembic_config(), 'head')"      # online, DATABASE_URL set
    ... command.upgrade(alembic_config(), 'head', sql=True)   # offline: print the SQL
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import context
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from engine.errors import ConfigError
from storage.sql.schema import include_object, metadata
from storage.sql.store import sqlalchemy_url

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("no database to migrate", variable="DATABASE_URL")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs via table copies
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(target: URL) -> None:
    engine = create_async_engine(target, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_offline() -> None:
    url = sqlalchemy_url(_url())
    context.configure(
        url=url,
        target_metadata=metadata,
        include_object=include_object,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        target = sqlalchemy_url(_url())
        if target.get_backend_name() == "sqlite" and target.database not in (None, "", ":memory:"):
            Path(target.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        asyncio.run(_run_standalone(target))


if context.is_offline_mode():
    run_offline()
else:
    run_online()
