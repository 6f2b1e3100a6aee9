"""Each query of the console's pages reads through the index it was written for, and sorts nothing: what
keeps its pages as fast with a million outbox rows as with none (``signup bench --only console`` times them).

The planner would read a table this small whole; with sequential and bitmap scans off (a bitmap loses the
index's order) it must still find a plan on the index, which proves the index serves the query's conditions
and its order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from services.admin import queries

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PLANS: list[tuple[sa.TextClause, dict[str, Any], str]] = [
    (queries.SIGNUPS_PER_MINUTE, {"since": NOW}, "users_created_at_idx"),
    (queries.SENT_PER_MINUTE, {"since": NOW}, "verify_emails_sent_at_idx"),
    (queries.BACKLOG, {"cap": 10}, "outbox_unpublished_idx"),
    (queries.UNHANDLED, {"cap": 10}, "outbox_unhandled_idx"),
    (queries.OLDEST_UNHANDLED, {}, "outbox_unhandled_idx"),
    (queries.UNHANDLED_PAGE, {"at": NOW, "id": 0, "limit": 50}, "outbox_unhandled_idx"),
    (queries.SIGNUPS_FIRST, {"limit": 50}, "users_created_at_idx"),
    (queries.SIGNUPS_PAGE, {"at": NOW, "username": "m", "limit": 50}, "users_created_at_idx"),
    (queries.BY_EMAIL, {"q": "a@example.com"}, "users_email_lower_key"),
    (queries.BY_USERNAME, {"q": "alice"}, "users_pkey"),
    (queries.BY_REQUEST_ID, {"q": "req"}, "outbox_trace_id_idx"),
]


@pytest.mark.parametrize(
    ("statement", "params", "index"), PLANS, ids=[p[2] + str(i) for i, p in enumerate(PLANS)]
)
async def test_each_console_query_reads_its_index_and_sorts_nothing(db, statement, params, index) -> None:
    async with db.connect() as connection:
        for setting in ("enable_seqscan", "enable_bitmapscan"):
            await connection.execute(sa.text(f"SET {setting} = off"))
        explain = sa.text(f"EXPLAIN {statement.text}")
        plan = "\n".join(row[0] for row in (await connection.execute(explain, params)).all())
    assert index in plan, plan
    assert "Sort" not in plan and "Seq Scan" not in plan, plan
