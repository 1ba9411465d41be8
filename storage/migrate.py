"""The schema's migrations, run from code: `alembic upgrade head` from any working directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

MIGRATIONS = Path(__file__).resolve().with_name("migrations")


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the migrations shipped inside this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    # kept out of the ini options, where a '%' in a password would be read as interpolation
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Create or migrate the schema. Call it outside any running event loop."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """`upgrade` from async code: Alembic runs its own event loop, so in a thread."""
    await asyncio.to_thread(upgrade, database_url, revision)


def head() -> str | None:
    """The newest revision among the migrations."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


async def current_async(database_url: str) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    engine = create_async_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


def current(database_url: str) -> str | None:
    """`current_async` for synchronous callers outside any running event loop."""
    return asyncio.run(current_async(database_url))
