"""What the soak reads back from its database: the committed users and the outbox rows left behind."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from shared.database import asyncpg_dsn


async def committed_users(database_url: str) -> dict[str, tuple[str, datetime]]:
    """username → (email, created_at) for every user that committed."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        rows = await connection.fetch("SELECT username, email, created_at FROM users")
    finally:
        await connection.close()
    return {row["username"]: (row["email"], row["created_at"]) for row in rows}


async def unpublished_rows(database_url: str) -> int:
    """Outbox rows the relay has not published (0 once it has caught up)."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    finally:
        await connection.close()
    return count
