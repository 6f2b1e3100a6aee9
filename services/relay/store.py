"""The relay's SQL on the outbox table (plain asyncpg: the claim is the hot path).

Every statement is parameterised. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so that any number of
relays can run at once without publishing a row twice, and without a "last seen id" cursor: ids are taken
at insert time, not commit time, so a cursor would skip rows whose transactions commit out of order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

# One DELETE per this many rows, so that a purge never holds a long lock or a huge transaction.
PURGE_BATCH = 1000

_CLAIM = """
SELECT id, event_id, actor, queue, payload::text AS payload, trace_id, trace_context::text AS trace_context,
       CASE WHEN available_at <= now() THEN NULL
            ELSE ceil(extract(epoch FROM available_at - now()) * 1000)::bigint END AS delay_ms
FROM outbox
WHERE published_at IS NULL AND available_at <= now() + make_interval(secs => $1::float8 / 1000)
ORDER BY id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
_MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
_RECORD_FAILURE = (
    "UPDATE outbox SET attempts = attempts + 1, last_error = $2 "
    "WHERE id = ANY($1::bigint[]) AND published_at IS NULL"
)
_PURGE = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE published_at IS NOT NULL AND published_at < now() - make_interval(hours => $1)
    LIMIT $2
)
"""
_BACKLOG = """
SELECT count(*) AS backlog,
       coalesce(extract(epoch FROM now() - min(available_at)), 0)::float8 AS oldest_age_s
FROM outbox WHERE published_at IS NULL AND available_at <= now()
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A claimed outbox row; ``delay_ms`` is None when the row is due now, ``trace_context`` for old rows."""

    id: int
    event_id: uuid.UUID
    actor: str
    queue: str
    payload: Any
    trace_id: str | None
    delay_ms: int | None
    trace_context: dict[str, str] | None = None


async def claim(connection: Any, *, limit: int, lookahead_ms: int) -> list[OutboxRow]:
    """Lock and return up to ``limit`` unpublished rows due within ``lookahead_ms``, oldest id first.

    Must run inside a transaction: the row locks last until it commits or rolls back.
    """
    records = await connection.fetch(_CLAIM, lookahead_ms, limit)
    return [
        OutboxRow(
            id=r["id"],
            event_id=r["event_id"],
            actor=r["actor"],
            queue=r["queue"],
            payload=msgspec.json.decode(r["payload"]),
            trace_id=r["trace_id"],
            trace_context=None if r["trace_context"] is None else msgspec.json.decode(r["trace_context"]),
            delay_ms=None if r["delay_ms"] is None else max(int(r["delay_ms"]), 0),
        )
        for r in records
    ]


async def mark_published(connection: Any, *, ids: list[int]) -> None:
    """Set ``published_at`` on the claimed rows (in the claim's transaction)."""
    await connection.execute(_MARK_PUBLISHED, ids)


async def record_failure(connection: Any, *, ids: list[int], error: str) -> None:
    """Count a failed publish attempt on the rows (in a transaction of its own, after the rollback)."""
    await connection.execute(_RECORD_FAILURE, ids, error[:2000])


async def purge(connection: Any, *, older_than_hours: int, batch: int = PURGE_BATCH) -> int:
    """Delete rows published more than ``older_than_hours`` ago, ``batch`` per statement; return the count."""
    deleted = 0
    while True:
        status = await connection.execute(_PURGE, older_than_hours, batch)
        count = int(status.split()[-1])
        deleted += count
        if count < batch:
            return deleted


async def backlog(connection: Any) -> tuple[int, float]:
    """The number of due unpublished rows and the age in seconds of the oldest one."""
    record = await connection.fetchrow(_BACKLOG)
    return int(record["backlog"]), float(record["oldest_age_s"])
