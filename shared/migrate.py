"""`signup migrate`: create the database if it is missing, then upgrade it to the newest revision.

Safe to run twice and from several processes at once: creation tolerates a concurrent creator, and the
upgrade runs under a PostgreSQL advisory lock, so a second migrator waits and then finds nothing to do.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from shared.database import asyncpg_dsn, create_engine
from shared.logging import get_logger

# An arbitrary constant that identifies "the schema migration" among advisory locks.
_MIGRATION_LOCK_ID = 7_351_024_981

log = get_logger()


def alembic_config() -> Config:
    """The Alembic configuration, pointing at the migrations that ship inside the package."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "migrations"))
    return config


async def create_database_if_missing(database_url: str) -> bool:
    """Create the URL's database unless it exists, in UTF-8; returns whether it was created.

    UTF-8 whatever the server's default: a cluster initialised without a locale defaults to SQL_ASCII, where
    ``varchar(100)`` counts bytes, and a full name of 60 letters in Devanagari no longer fits (found by the
    fuzz test against such a PostgreSQL).
    """
    url = make_url(asyncpg_dsn(database_url))
    name = url.database
    if not name:
        raise ValueError("DATABASE_URL names no database")
    admin = await asyncpg.connect(asyncpg_dsn(url.set(database="postgres").render_as_string(False)))
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            # CREATE DATABASE takes no bind parameters: quote the identifier. template0, because template1
            # carries the server's default encoding and a copy of it cannot change encoding.
            await admin.execute(
                f"CREATE DATABASE \"{name.replace(chr(34), chr(34) * 2)}\" ENCODING 'UTF8' TEMPLATE template0"
            )
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            return False  # another migrator won the race
        return True
    finally:
        await admin.close()


async def migrate(database_url: str, *, revision: str = "head") -> None:
    """Create the database if needed and upgrade it to ``revision``."""
    if await create_database_if_missing(database_url):
        log.info("database created", database=make_url(asyncpg_dsn(database_url)).database)
    await _alembic(database_url, lambda config: command.upgrade(config, revision))
    log.info("database migrated", revision=revision)


async def downgrade(database_url: str, *, revision: str) -> None:
    """Downgrade the database to ``revision`` (``base`` drops every table)."""
    await _alembic(database_url, lambda config: command.downgrade(config, revision))


async def _alembic(database_url: str, operation: object) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            await connection.commit()

            def run(sync_connection: Connection) -> None:
                config = alembic_config()
                config.attributes["connection"] = sync_connection
                operation(config)  # type: ignore[operator]

            await connection.run_sync(run)
            await connection.commit()
            await connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
            await connection.commit()
    finally:
        await engine.dispose()
