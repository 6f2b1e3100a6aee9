"""The relay's SQL on the outbox table (plain asyncpg: the claim is the hot path).

Every statement is parameterised. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so that any number of
relays can run at once without publishing a row twice, and without a "last seen id" cursor: ids are taken
at insert time, not commit time, so a cursor would skip rows whose transactions commit out of order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

# One DELETE per this many rows, so that a purge never holds a long lock or a huge transaction.
PURGE_BATCH = 1000

# What a publish needs of a row; ``delay_ms`` is NULL for a row due now.
_COLUMNS = """
       id, event_id, actor, queue, payload::text AS payload, trace_id, trace_context::text AS trace_context,
       CASE WHEN available_at <= now() THEN NULL
            ELSE ceil(extract(epoch FROM available_at - now()) * 1000)::bigint END AS delay_ms"""
# Claim and mark in one statement: the UPDATE's row locks are the claim (held until the batch's transaction
# ends; a rollback unmarks them), and each row is written once instead of locked, then updated. The batch is
# the first rows of the partial index ``outbox_unpublished_idx`` in its own order (available_at, id): with
# ORDER BY id the claim sorted the whole backlog, or walked the primary key over every published row, for
# each batch. ``= ANY(ARRAY(…))`` makes the UPDATE one index lookup per claimed id.
CLAIM = f"""
UPDATE outbox SET published_at = now()
WHERE id = ANY(ARRAY(
    SELECT id FROM outbox
    WHERE published_at IS NULL AND available_at <= now() + make_interval(secs => $1::float8 / 1000)
    ORDER BY available_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING {_COLUMNS}
"""
_RECORD_FAILURE = (
    "UPDATE outbox SET attempts = attempts + 1, last_error = $2 "
    "WHERE id = ANY($1::bigint[]) AND published_at IS NULL"
)
_PURGE = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE published_at IS NOT NULL AND published_at < now() - make_interval(hours => $1)
      AND handled_at IS NOT NULL
    LIMIT $2
)
"""
# Reconciliation (DESIGN §13). Both walk outbox_unhandled_idx (published, not handled): handled rows, however
# many, are never read. The candidates come in (published_at, id) order after a cursor, so that a pass that
# finds its rows all still in Redis moves on, and the next pass starts where it stopped.
CURSOR_START = (datetime(1970, 1, 1, tzinfo=UTC), 0)
"""Before every row: where a pass starts after it reached the end."""
CANDIDATES = """
SELECT id, event_id, published_at
FROM outbox
WHERE published_at IS NOT NULL AND handled_at IS NULL
  AND (published_at, id) > ($1::timestamptz, $2::bigint)
  AND published_at < now() - make_interval(secs => $3::float8 / 1000)
  AND (republished_at IS NULL OR republished_at < now() - make_interval(secs => $3::float8 / 1000))
ORDER BY published_at, id
LIMIT $4
"""
# The conditions again, under the row lock: a row handled (or re-published by another relay) since the
# candidates were read is left alone.
_MARK_REPUBLISHED = f"""
UPDATE outbox SET republished_at = now(), republish_count = republish_count + 1
WHERE id = ANY($1::bigint[]) AND handled_at IS NULL
  AND (republished_at IS NULL OR republished_at < now() - make_interval(secs => $2::float8 / 1000))
RETURNING {_COLUMNS}
"""
_UNHANDLED_AGE = """
SELECT coalesce(extract(epoch FROM now() - min(published_at)), 0)::float8
FROM outbox WHERE published_at IS NOT NULL AND handled_at IS NULL
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
    """Mark published, lock and return (in id order) up to ``limit`` unpublished rows due within
    ``lookahead_ms``, the earliest due first.

    Must run inside the transaction that enqueues them: the row locks last until it commits, and a rollback
    leaves the rows unpublished.
    """
    records = await connection.fetch(CLAIM, lookahead_ms, limit)
    return [_row(r) for r in sorted(records, key=lambda r: int(r["id"]))]


def _row(r: Any) -> OutboxRow:
    return OutboxRow(
        id=r["id"],
        event_id=r["event_id"],
        actor=r["actor"],
        queue=r["queue"],
        payload=msgspec.json.decode(r["payload"]),
        trace_id=r["trace_id"],
        trace_context=None if r["trace_context"] is None else msgspec.json.decode(r["trace_context"]),
        delay_ms=None if r["delay_ms"] is None else max(int(r["delay_ms"]), 0),
    )


async def record_failure(connection: Any, *, ids: list[int], error: str) -> None:
    """Count a failed publish attempt on the rows (in a transaction of its own, after the rollback)."""
    await connection.execute(_RECORD_FAILURE, ids, error[:2000])


async def purge(connection: Any, *, older_than_hours: int, batch: int = PURGE_BATCH) -> int:
    """Delete handled rows published more than ``older_than_hours`` ago, ``batch`` per statement; return the
    count. A row not yet handled is kept: reconciliation may still need it."""
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


@dataclass(frozen=True, slots=True)
class Candidate:
    """A published row not handled after the grace period: its message may be lost."""

    id: int
    event_id: uuid.UUID
    published_at: datetime


async def candidates(
    connection: Any, *, after: tuple[datetime, int], grace_ms: int, limit: int
) -> list[Candidate]:
    """Up to ``limit`` published, unhandled rows older than ``grace_ms``, in (published_at, id) order after
    ``after``: one query on the partial index of unhandled rows."""
    records = await connection.fetch(CANDIDATES, after[0], after[1], grace_ms, limit)
    return [Candidate(r["id"], r["event_id"], r["published_at"]) for r in records]


async def mark_republished(connection: Any, *, ids: list[int], grace_ms: int) -> list[OutboxRow]:
    """Lock the rows of ``ids`` still unhandled (and not re-published within ``grace_ms``), count a
    re-publish on them and return them (a row not yet due with its remaining delay, as a claim does). Run
    it in the transaction that enqueues them."""
    records = await connection.fetch(_MARK_REPUBLISHED, ids, grace_ms)
    return [_row(r) for r in sorted(records, key=lambda r: int(r["id"]))]


async def unhandled_age(connection: Any) -> float:
    """The age in seconds of the oldest published row not yet handled (0 when there is none)."""
    return float(await connection.fetchval(_UNHANDLED_AGE))
