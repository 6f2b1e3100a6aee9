"""The PostgreSQL side of an experiment or a test: throw-away databases, and what the system wrote there."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy.engine import make_url

from shared.database import asyncpg_dsn
from shared.messages import SendVerifyEmail


def with_database(url: str, database: str) -> str:
    """``url`` (any PostgreSQL URL, credentials and options kept) naming ``database`` instead."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def admin_url(database_url: str) -> str:
    """The server of ``database_url``, database ``postgres``, as asyncpg wants it: where databases are
    created and dropped."""
    return with_database(asyncpg_dsn(database_url), "postgres")


async def drop_database(admin: str, name: str) -> None:
    """Drop database ``name`` on the server of ``admin``, closing its connections first."""
    connection = await asyncpg.connect(asyncpg_dsn(admin), timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


# Rows as the API writes them; ``published`` rows stand for what the relay has already moved.
_INSERT_OUTBOX_ROWS = """
INSERT INTO outbox (event_id, actor, queue, payload, published_at)
SELECT gen_random_uuid(), $1, $2, jsonb_build_object('username', 'u_' || g),
       CASE WHEN $4 THEN now() END
FROM generate_series($5::bigint, $5::bigint + $3 - 1) AS g
"""
_INSERT_USERS = """
INSERT INTO users (username, hashed_password, full_name, email)
SELECT 'u_' || g, 'not-a-hash', 'Bench User', 'u_' || g || '@bench.example' FROM generate_series(1, $1) AS g
"""


async def insert_users(connection: Any, count: int) -> None:
    """Users ``u_1`` … ``u_{count}`` (address ``u_N@bench.example``, no real password hash), on an asyncpg
    connection."""
    await connection.execute(_INSERT_USERS, count)


async def insert_outbox_rows(connection: Any, count: int, *, published: bool, first: int = 1) -> None:
    """``count`` outbox rows for users ``u_{first}``…, in one statement (one NOTIFY at its commit), on an
    asyncpg connection."""
    await connection.execute(
        _INSERT_OUTBOX_ROWS, SendVerifyEmail.actor, SendVerifyEmail.queue, count, published, first
    )


async def count_unpublished(connection: Any) -> int:
    """Outbox rows the relay has not published yet (0 once it has caught up), on an asyncpg connection."""
    return int(await connection.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def unpublished_rows(database_url: str) -> int:
    """``count_unpublished`` on a connection of its own."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        return await count_unpublished(connection)
    finally:
        await connection.close()


async def republished_rows(database_url: str) -> int:
    """How many re-publishes reconciliation made, summed over the outbox rows."""
    (rows,) = await _fetch(database_url, "SELECT coalesce(sum(republish_count), 0) AS n FROM outbox")
    return int(rows[0]["n"])


async def _fetch(database_url: str, *queries: str) -> list[list[Any]]:
    """The rows of each of ``queries``, on a connection of its own."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        return [await connection.fetch(query) for query in queries]
    finally:
        await connection.close()


async def committed_users(database_url: str) -> dict[str, datetime]:
    """username → created_at of every user that committed."""
    (rows,) = await _fetch(database_url, "SELECT username, created_at FROM users")
    return {row["username"]: row["created_at"] for row in rows}


async def verified_users(database_url: str) -> set[str]:
    """The usernames whose address is verified."""
    (rows,) = await _fetch(database_url, "SELECT username FROM users WHERE is_email_verified")
    return {row["username"] for row in rows}


class CountedResend(NamedTuple):
    """A resend that passed the limits: a row of ``verify_email_resends`` and its outbox event's trace id."""

    username: str
    requested_at: datetime
    request_id: str | None
    """The outbox event's ``trace_id``: the asking request's ``X-Request-ID`` when tracing is off."""


async def mail_records(database_url: str) -> tuple[dict[str, str], dict[str, CountedResend]]:
    """What should have been emailed: every outbox event (event id → username; the relay's purge keeps a
    week of them), and every resend that passed the limits (event id → its ``CountedResend``)."""
    events, resends = await _fetch(
        database_url,
        "SELECT event_id::text, payload->>'username' AS username FROM outbox",
        "SELECT r.event_id::text, r.username, r.requested_at, o.trace_id"
        " FROM verify_email_resends r LEFT JOIN outbox o USING (event_id)",
    )
    return (
        {row["event_id"]: row["username"] for row in events},
        {
            row["event_id"]: CountedResend(row["username"], row["requested_at"], row["trace_id"])
            for row in resends
        },
    )
