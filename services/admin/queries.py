"""What the console's pages read from PostgreSQL: each query bounded, each on an index (keyset pages).

``tests/integration/test_console_queries.py`` checks each statement's plan names its index and sorts
nothing; ``signup bench --only console`` times them with a million outbox rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

COUNT_CAP = 100_000
"""Counts stop here ("100000+"): a backlog of millions costs no more to show than one of 100,000."""
PAGE = 50

SIGNUPS_PER_MINUTE = sa.text(
    "SELECT date_trunc('minute', created_at) AS minute, count(*) AS n FROM users "
    "WHERE created_at >= :since GROUP BY 1"
)
SENT_PER_MINUTE = sa.text(
    "SELECT date_trunc('minute', sent_at) AS minute, count(*) AS n FROM verify_emails "
    "WHERE sent_at IS NOT NULL AND sent_at >= :since GROUP BY 1"
)
BACKLOG = sa.text(
    "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT :cap) AS capped"
)
UNHANDLED = sa.text(
    "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NOT NULL AND handled_at IS NULL "
    "LIMIT :cap) AS capped"
)
OLDEST_UNHANDLED = sa.text(
    "SELECT published_at FROM outbox WHERE published_at IS NOT NULL AND handled_at IS NULL "
    "ORDER BY published_at, id LIMIT 1"
)
REPUBLISHED = sa.text(
    "SELECT count(*) FROM outbox WHERE republished_at IS NOT NULL AND republished_at >= :since"
)
UNHANDLED_PAGE = sa.text(
    "SELECT id, event_id, actor, payload->>'username' AS username, trace_id, published_at, republish_count "
    "FROM outbox WHERE published_at IS NOT NULL AND handled_at IS NULL AND (published_at, id) > (:at, :id) "
    "ORDER BY published_at, id LIMIT :limit"
)
SIGNUPS_PAGE = sa.text(
    "SELECT username, created_at, is_email_verified FROM users "
    "WHERE (created_at, username) < (:at, :username) ORDER BY created_at DESC, username DESC LIMIT :limit"
)
SIGNUPS_FIRST = sa.text(
    "SELECT username, created_at, is_email_verified FROM users ORDER BY created_at DESC, username DESC "
    "LIMIT :limit"
)
BY_EMAIL = sa.text("SELECT username FROM users WHERE lower(email) = lower(:q)")
BY_USERNAME = sa.text("SELECT username FROM users WHERE username = :q")
BY_REQUEST_ID = sa.text("SELECT payload->>'username' FROM outbox WHERE trace_id = :q LIMIT 1")


@dataclass(frozen=True)
class Outbox:
    backlog: int
    unhandled: int
    oldest_unhandled: datetime | None
    republished: int
    """Rows reconciliation re-published in the last hour (the partial index holds only re-published rows)."""


async def per_minute(
    connection: AsyncConnection, statement: sa.TextClause, since: datetime
) -> dict[datetime, int]:
    """Counts by minute since ``since`` (minutes without any are absent)."""
    rows = (await connection.execute(statement, {"since": since})).all()
    return {row.minute: int(row.n) for row in rows}


SETTLE = timedelta(minutes=2)
"""A minute this long past is closed: the rows dated in it have committed (a signup's or a send's
transaction lasts milliseconds; the margin covers that and modest clock skew between hosts)."""


class MinuteCounts:
    """``statement``'s counts by minute for the last hour, with the closed minutes remembered.

    The first read counts the whole hour; each later one counts only from the first minute not yet closed
    when it last read (about ``SETTLE``), so a refresh reads a few minutes' rows, not the hour's. The rows
    stay the truth: nothing is counted twice or kept elsewhere, and a new process starts from them again.
    """

    def __init__(self, statement: sa.TextClause) -> None:
        self.statement = statement
        self._closed: dict[datetime, int] = {}
        self._closed_until: datetime | None = None  # every minute before it is in _closed (or had none)

    async def read(self, connection: AsyncConnection, first: datetime, now: datetime) -> dict[datetime, int]:
        """Counts by minute from ``first`` (minutes without any are absent)."""
        known = self._closed_until is not None and self._closed_until >= first
        since = self._closed_until if known and self._closed_until is not None else first
        counted = await per_minute(connection, self.statement, since)
        settled = now.replace(second=0, microsecond=0) - SETTLE
        self._closed = {m: n for m, n in self._closed.items() if m >= first} if known else {}
        self._closed.update({m: n for m, n in counted.items() if m < settled})
        self._closed_until = max(settled, since)
        return {**self._closed, **{m: n for m, n in counted.items() if m >= settled}}


async def outbox_state(connection: AsyncConnection) -> Outbox:
    backlog = (await connection.execute(BACKLOG, {"cap": COUNT_CAP + 1})).scalar_one()
    unhandled = (await connection.execute(UNHANDLED, {"cap": COUNT_CAP + 1})).scalar_one()
    oldest = (await connection.execute(OLDEST_UNHANDLED)).scalar_one_or_none()
    since = datetime.now(UTC) - timedelta(hours=1)
    republished = (await connection.execute(REPUBLISHED, {"since": since})).scalar_one()
    return Outbox(
        backlog=int(backlog), unhandled=int(unhandled), oldest_unhandled=oldest, republished=int(republished)
    )


async def find_username(connection: AsyncConnection, query: str) -> str | None:
    """The user a search names: by username, by email address, or by the request id of one of its events."""
    query = query.strip()[:200]
    if not query:
        return None
    for statement in (BY_USERNAME, BY_EMAIL, BY_REQUEST_ID):
        found = (await connection.execute(statement, {"q": query})).scalar()
        if found:
            return str(found)
    return None


async def unhandled_page(
    connection: AsyncConnection, *, after: tuple[datetime, int] | None, limit: int = PAGE
) -> list[sa.Row[tuple[object, ...]]]:
    """Published events not yet handled, oldest first, after the keyset ``(published_at, id)``."""
    at, id_ = after or (datetime(1970, 1, 1, tzinfo=UTC), 0)
    return list((await connection.execute(UNHANDLED_PAGE, {"at": at, "id": id_, "limit": limit})).all())


async def signups_page(
    connection: AsyncConnection, *, before: tuple[datetime, str] | None, limit: int = PAGE
) -> list[sa.Row[tuple[object, ...]]]:
    """Signups, newest first, before the keyset ``(created_at, username)``."""
    if before is None:
        return list((await connection.execute(SIGNUPS_FIRST, {"limit": limit})).all())
    params = {"at": before[0], "username": before[1], "limit": limit}
    return list((await connection.execute(SIGNUPS_PAGE, params)).all())
