"""Each query of the console's pages reads through the index it was written for, and a page sorts nothing:
what keeps them as fast with a million outbox rows as with none (``signup bench --only console`` times them).

The planner would read a table this small whole; with sequential and bitmap scans off (a bitmap loses the
index's order) it must still find a plan on the index, which proves the index serves the query's conditions
and its order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.admin import queries

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PER_MINUTE = (queries.SIGNUPS_PER_MINUTE, queries.SENT_PER_MINUTE)
PLANS: list[tuple[sa.TextClause, dict[str, Any], str]] = [
    (queries.SIGNUPS_PER_MINUTE, {"since": NOW}, "users_created_at_idx"),
    (queries.SENT_PER_MINUTE, {"since": NOW}, "verify_emails_sent_at_idx"),
    (queries.BACKLOG, {"cap": 10}, "outbox_unpublished_idx"),
    (queries.UNHANDLED, {"cap": 10}, "outbox_unhandled_idx"),
    (queries.OLDEST_UNHANDLED, {}, "outbox_unhandled_idx"),
    (queries.REPUBLISHED, {"since": NOW}, "outbox_republished_idx"),
    (queries.UNHANDLED_PAGE, {"at": NOW, "id": 0, "limit": 50}, "outbox_unhandled_idx"),
    (queries.SIGNUPS_FIRST, {"limit": 50}, "users_created_at_idx"),
    (queries.SIGNUPS_PAGE, {"at": NOW, "username": "m", "limit": 50}, "users_created_at_idx"),
    (queries.BY_EMAIL, {"q": "a@example.com"}, "users_email_lower_idx"),
    (queries.BY_USERNAME, {"q": "alice"}, "users_pkey"),
    (queries.BY_REQUEST_ID, {"q": "req"}, "outbox_trace_id_idx"),
]


_SEED = [
    "INSERT INTO users (username, hashed_password, full_name, email) "
    "SELECT 'user' || g, 'x', 'U', 'user' || g || '@example.com' FROM generate_series(1, 200) AS g",
    # Mostly handled rows, a few unhandled and unpublished ones: the shape of a real outbox.
    "INSERT INTO outbox (event_id, actor, queue, payload, trace_id, published_at, handled_at) "
    "SELECT gen_random_uuid(), 'a', 'q', jsonb_build_object('username', 'user' || g % 200), 'r' || g, "
    "CASE WHEN g % 100 = 0 THEN NULL ELSE now() END, CASE WHEN g % 100 IN (0, 1) THEN NULL ELSE now() END "
    "FROM generate_series(1, 4000) AS g",
    "ANALYZE users, outbox, verify_emails",
]


@pytest.fixture
async def seeded(db: Any) -> Any:
    """Tables of a realistic shape with fresh statistics (other tests' leftovers mislead the planner)."""
    async with db.begin() as connection:
        for statement in _SEED:
            await connection.execute(sa.text(statement))
    return db


@pytest.mark.parametrize(
    ("statement", "params", "index"), PLANS, ids=[p[2] + str(i) for i, p in enumerate(PLANS)]
)
async def test_each_console_query_reads_its_index_and_sorts_nothing(seeded, statement, params, index) -> None:
    async with seeded.connect() as connection:
        for setting in ("enable_seqscan", "enable_bitmapscan"):
            await connection.execute(sa.text(f"SET {setting} = off"))
        explain = sa.text(f"EXPLAIN {statement.text}")
        plan = "\n".join(row[0] for row in (await connection.execute(explain, params)).all())
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan
    # A per-minute count groups the last hour's rows (bounded by traffic, not the table); a page sorts none.
    assert "Sort" not in plan or statement in PER_MINUTE, plan


async def test_the_charts_count_a_closed_minute_once_and_the_open_ones_each_time(db: Any) -> None:
    """A second read counts only the minutes not yet closed: a row dated in a closed minute afterwards is
    not read again (proof that the hour is not), a row in an open minute is."""
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    minute = now.replace(second=0)
    first = minute - timedelta(minutes=59)
    insert = sa.text(
        "INSERT INTO users (username, hashed_password, full_name, email, created_at) "
        "VALUES (:u, 'x', 'U', :e, :at)"
    )
    old, live = minute - timedelta(minutes=30), minute
    async with db.begin() as connection:
        for username, at in [("old_1", old), ("live_1", live)]:
            await connection.execute(insert, {"u": username, "e": f"{username}@example.com", "at": at})
    counts = queries.MinuteCounts(queries.SIGNUPS_PER_MINUTE)
    async with db.connect() as connection:
        assert await counts.read(connection, first, now) == {old: 1, live: 1}
    async with db.begin() as connection:
        for username, at in [("old_2", old), ("live_2", live)]:
            await connection.execute(insert, {"u": username, "e": f"{username}@example.com", "at": at})
    async with db.connect() as connection:
        assert await counts.read(connection, first, now) == {old: 1, live: 2}
        # A process starting afresh counts from the rows: the truth.
        fresh = queries.MinuteCounts(queries.SIGNUPS_PER_MINUTE)
        assert await fresh.read(connection, first, now) == {old: 2, live: 2}
