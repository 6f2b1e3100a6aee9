"""Section 12 of ``signup bench``: the operator console's queries with ``plan.reconcile_rows`` outbox rows.

A database of its own (no ``signup`` process): that many outbox rows (published and handled over the last
two hours, with 1 % unpublished and 1 % published but unhandled), a user per ten rows and a sent email per
user. Each page's queries are the console's own functions (``services/admin/queries.py`` and ``signup
trace``'s ``load_timeline``), run ``REPEATS`` times on one connection; the table gives each page's median and
p99 in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from lab.bench.model import BenchPlan, Section, ms
from lab.harness.stack import Stack
from services.admin import queries
from shared.database import asyncpg_dsn, create_engine
from signup_cli.trace import load_timeline

REPEATS = 200
BOUND_MS = 50.0
"""What each page's queries must stay within at p99 (the page renders in a fraction of that)."""

_USERS = """
INSERT INTO users (username, hashed_password, full_name, email, created_at)
SELECT 'u_' || g, 'x', 'User ' || g, 'u_' || g || '@example.com',
       now() - make_interval(secs => g * 7200.0 / $1)
FROM generate_series(1, $1) AS g
"""
_OUTBOX = """
INSERT INTO outbox (event_id, actor, queue, payload, trace_id, created_at, available_at, published_at,
                    handled_at)
SELECT gen_random_uuid(), 'send_verify_email', 'critical',
       jsonb_build_object('username', 'u_' || (g % $2 + 1)),
       'req-' || g, at, at, CASE WHEN g % 100 = 0 THEN NULL ELSE at END,
       CASE WHEN g % 100 IN (0, 1) THEN NULL ELSE at END
FROM generate_series(1, $1) AS g, LATERAL (SELECT now() - make_interval(secs => g * 7200.0 / $1) AS at) AS t
"""
_EMAILS = """
INSERT INTO verify_emails (username, email, code_sha256, event_id, created_at, expired_at, sent_at)
SELECT username, email, repeat('c', 64), gen_random_uuid(), created_at,
       created_at + interval '15 minutes', created_at
FROM users
"""


async def _seed(dsn: str, rows: int) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        users = max(1, rows // 10)
        await connection.execute(_USERS, users)
        await connection.execute(_OUTBOX, rows, users)
        await connection.execute(_EMAILS)
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


def _pages(rows: int) -> dict[str, Callable[[AsyncConnection], Awaitable[Any]]]:
    middle = f"u_{max(1, rows // 20)}"
    now = datetime.now(UTC)
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=59)

    async def overview_first(connection: AsyncConnection) -> None:
        # A console that just started: the whole hour counted (what every load cost before).
        await queries.MinuteCounts(queries.SIGNUPS_PER_MINUTE).read(connection, since, now)
        await queries.MinuteCounts(queries.SENT_PER_MINUTE).read(connection, since, now)
        await queries.outbox_state(connection)

    signups, sent = (
        queries.MinuteCounts(queries.SIGNUPS_PER_MINUTE),
        queries.MinuteCounts(queries.SENT_PER_MINUTE),
    )

    async def overview(connection: AsyncConnection) -> None:
        # Every later load (a refresh): the closed minutes are remembered, the open ones counted.
        await signups.read(connection, since, now)
        await sent.read(connection, since, now)
        await queries.outbox_state(connection)

    async def signup_by_email(connection: AsyncConnection) -> None:
        username = await queries.find_username(connection, f"{middle}@example.com")
        assert username is not None
        await load_timeline(connection, username)

    async def signup_by_request_id(connection: AsyncConnection) -> None:
        username = await queries.find_username(connection, f"req-{rows // 2}")
        assert username is not None
        await load_timeline(connection, username)

    async def signups_deep_page(connection: AsyncConnection) -> None:
        await queries.signups_page(connection, before=(now - timedelta(minutes=90), middle))

    async def unhandled_deep_page(connection: AsyncConnection) -> None:
        await queries.unhandled_page(connection, after=(now - timedelta(minutes=90), 0))

    return {
        "overview, first load": overview_first,
        "overview": overview,
        "signup (by email)": signup_by_email,
        "signup (by request id)": signup_by_request_id,
        "signups, a page an hour deep": signups_deep_page,
        "unhandled events, a page an hour deep": unhandled_deep_page,
    }


async def console_section(plan: BenchPlan, *, work_dir: Path, pg: str) -> Section:
    """Section 12: each console page's queries, median and p99, at ``plan.reconcile_rows`` outbox rows."""
    rows = plan.reconcile_rows
    timings: dict[str, list[float]] = {}
    async with Stack(work_dir=work_dir / "console", services=(), pg_admin_url=pg) as stack:
        await _seed(asyncpg_dsn(stack.database_url), rows)
        engine = create_engine(stack.database_url, pool_size=1)
        try:
            async with engine.connect() as connection:
                for name, run in _pages(rows).items():
                    await run(connection)  # prepared, cached
                    spent = []
                    for _ in range(REPEATS):
                        started = time.perf_counter()
                        await run(connection)
                        spent.append(time.perf_counter() - started)
                    timings[name] = sorted(spent)
        finally:
            await engine.dispose()
    p99 = {name: spent[int(len(spent) * 0.99) - 1] for name, spent in timings.items()}
    worst = max(p99.values())
    return Section(
        key="console",
        title=f"12. The operator console's queries per page, {rows:,} outbox rows",
        headers=["page", "median ms", "p99 ms"],
        rows=[[name, ms(statistics.median(spent)), ms(p99[name])] for name, spent in timings.items()],
        figures={"worst_p99_ms": worst * 1000, "outbox_rows": float(rows), "bound_ms": BOUND_MS},
        notes=[
            f"worst p99 {ms(worst)} ms, {'within' if worst * 1000 <= BOUND_MS else 'above'} the bound of "
            f"{BOUND_MS:g} ms. Every list is a keyset page and every count is capped, on an index "
            "(tests/integration/test_console_queries.py checks the plans). The overview's per-minute "
            "counts read every signup and sent email of the last hour on a console's first load only; "
            "later loads remember the closed minutes and count the last ~3 (queries.MinuteCounts).",
            f"{rows:,} outbox rows over two hours (1 % unpublished, 1 % unhandled), "
            f"{max(1, rows // 10):,} users each with a sent email; {REPEATS} runs per page on one "
            "connection after a warm-up run.",
        ],
    )
