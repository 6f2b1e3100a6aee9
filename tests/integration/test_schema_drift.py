"""The tables in code (shared/database.py) against the schema the migrations build: they must not drift.

The schema of the session's database was built by running the Alembic migrations (tests/conftest.py);
Alembic's autogenerate comparison lists every table, column, type, nullability, index, unique constraint
and foreign key on which the two disagree.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.database import metadata


async def differences(engine: AsyncEngine, tables: sa.MetaData) -> list[Any]:
    def compare(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, tables))

    async with engine.connect() as connection:
        return await connection.run_sync(compare)


async def test_the_tables_in_code_match_the_migrated_database(engine: AsyncEngine) -> None:
    assert await differences(engine, metadata) == []


async def test_a_column_only_in_code_is_reported(engine: AsyncEngine) -> None:
    """The comparison above can fail: one extra column in a copy of the tables shows as one difference."""
    drifted = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["users"].append_column(sa.Column("nickname", sa.Text))

    [(operation, *_rest)] = await differences(engine, drifted)
    assert operation == "add_column" and _rest[2].name == "nickname"
