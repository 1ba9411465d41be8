"""Alembic's environment: the migrations run over the async engine of the database URL.

The application migrates with `storage.migrate.upgrade(url)` (`qunban db upgrade`), which sets the
URL as `config.attributes["database_url"]`. By hand, Alembic reads QUNBAN_DATABASE_URL.

To make a new migration after changing storage/tables.py, from the repository root:

    alembic -c storage/alembic.ini revision --autogenerate -m "add ticket priority"

or from Python:

    from alembic import command
    from storage.migrate import alembic_config
    command.revision(alembic_config(url), message="add ticket priority", autogenerate=True)

then read the file it writes under versions/ (autogenerate misses renames and server-side
objects such as the ticket-event triggers) and run the tests, which check that the migrations
and storage/tables.py agree. While nothing is deployed, storage/migrations/regenerate.sh
rewrites the one initial migration instead.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from storage import tables  # noqa: F401  (registers the tables on the metadata)

DEFAULT_URL = "sqlite+aiosqlite:///qunban.db"

config = context.config
target_metadata = SQLModel.metadata

if config.config_file_name is not None:  # run by hand with storage/alembic.ini
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("QUNBAN_DATABASE_URL")
    return str(url or DEFAULT_URL)


def _configure(**kwargs: object) -> None:
    # SQLite alters a table by copying it: batch mode writes the migrations that way
    context.configure(target_metadata=target_metadata, render_as_batch=True, **kwargs)


def run_migrations_offline() -> None:
    """Write the SQL to standard output instead of running it (`alembic upgrade --sql`)."""
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: sa.Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_database_url(), poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a synchronous connection lent by the caller
        _run_on(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
