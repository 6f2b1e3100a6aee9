"""Section 9 of ``signup bench``: one reconciliation pass against the number of published rows.

A stack of its own with no ``signup`` process: its fresh database and private Redis (AOF fsynced on every
write, as in the lab). ``plan.reconcile_unhandled`` published rows are not handled: the older half has its
message in Redis (enqueued by the relay's own ``enqueue_batch``, locators and all), the newer half is lost.
The relay, built by ``build_relay`` as ``signup relay`` builds it, then runs single passes
(``Relay.reconcile``) of ``RECONCILE_BATCH_SIZE`` = half of them: a *check* pass over rows all still in
Redis (one query, one script call), and a *re-publish* pass over the lost ones (one query, one script call,
one UPDATE, one script call that enqueues the messages), undone after each repeat. Both are measured first
with only the unhandled rows in the table, then with ``plan.reconcile_rows`` published rows, the rest handled.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis

from lab.bench.model import BenchPlan, Section, fmt, ms, ratio
from lab.harness.stack import Stack
from services.relay import store
from services.relay.publisher import enqueue_batch
from services.relay.relay import Relay, build_relay
from shared.broker import NAMESPACE, create_broker
from shared.database import asyncpg_dsn
from shared.logging import configure_logging
from shared.settings import Settings, load_settings

# ``handled`` rows are published and handled an hour ago; the unhandled ones just after them, oldest first.
_INSERT = """
INSERT INTO outbox (event_id, actor, queue, payload, published_at, handled_at)
SELECT gen_random_uuid(), 'send_verify_email', 'critical', jsonb_build_object('username', 'u_' || g),
       now() - interval '1 hour' + make_interval(secs => ($4 + g)::float8 / 1e6),
       CASE WHEN $2 THEN now() END
FROM generate_series($3::bigint, $3::bigint + $1 - 1) AS g
"""
_UNHANDLED = """
SELECT id, event_id, actor, queue, payload::text AS payload, trace_id FROM outbox
WHERE handled_at IS NULL ORDER BY published_at, id
"""
_UNDO = "UPDATE outbox SET republished_at = NULL, republish_count = 0 WHERE id = ANY($1::bigint[])"


async def _seed_unhandled(settings: Settings, connection: Any, count: int) -> list[store.OutboxRow]:
    """``count`` unhandled rows; the older half's messages into Redis. Returns the newer (lost) half."""
    await connection.execute(_INSERT, count, False, 1, 0)
    records = await connection.fetch(_UNHANDLED)
    rows = [
        store.OutboxRow(**{**dict(r), "payload": json.loads(r["payload"]), "delay_ms": None}) for r in records
    ]
    broker = create_broker(settings)
    try:
        present = rows[: count // 2]
        for first in range(0, len(present), 500):
            await asyncio.to_thread(enqueue_batch, broker, present[first : first + 500])
    finally:
        broker.close()
    return rows[count // 2 :]


async def _passes(
    relay: Relay, connection: Any, client: redis.Redis, lost: list[store.OutboxRow], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` check passes and of ``repeats`` re-publish passes (each undone after)."""
    check, republish = [], []
    for _ in range(repeats):
        relay.rewind()
        started = time.perf_counter()
        done = await relay.reconcile()
        check.append(time.perf_counter() - started)
        if done.missing:
            raise RuntimeError(f"the check pass found {done.missing} lost messages, expected none")
        started = time.perf_counter()
        done = await relay.reconcile()
        republish.append(time.perf_counter() - started)
        if done.republished != len(lost):
            raise RuntimeError(f"re-published {done.republished} rows, expected {len(lost)}")
        # Undo: the lost rows lose their re-publish and, with their locators, their messages again.
        await connection.execute(_UNDO, [row.id for row in lost])
        client.hdel(f"{NAMESPACE}:locators", *[str(row.event_id) for row in lost])
    return sorted(check), sorted(republish)


async def reconcile_section(plan: BenchPlan, *, work_dir: Path, pg: str) -> Section:
    """Section 9: a reconciliation pass with few and with ``plan.reconcile_rows`` published rows."""
    unhandled = plan.reconcile_unhandled
    # The relay logs a warning per re-published row: thousands here, by design of the section.
    configure_logging(service="bench", log_format="console", log_level="error")
    results: dict[int, tuple[list[float], list[float]]] = {}
    async with Stack(work_dir=work_dir / "reconcile", services=(), pg_admin_url=pg) as stack:
        settings = load_settings(
            stack.env, relay_metrics_port=0, reconcile_batch_size=unhandled // 2, reconcile_grace_ms=1000
        )
        connection = await asyncpg.connect(asyncpg_dsn(stack.database_url), timeout=10)
        client = redis.Redis.from_url(stack.redis.url)
        relay = build_relay(settings)
        await relay.connect()
        try:
            lost = await _seed_unhandled(settings, connection, unhandled)
            await connection.execute("VACUUM ANALYZE outbox")
            results[unhandled] = await _passes(relay, connection, client, lost, plan.reconcile_repeats)
            handled = plan.reconcile_rows - unhandled
            await connection.execute(_INSERT, handled, True, unhandled + 1, -10_000_000)
            await connection.execute("VACUUM ANALYZE outbox")
            results[plan.reconcile_rows] = await _passes(
                relay, connection, client, lost, plan.reconcile_repeats
            )
        finally:
            await relay.close()
            client.close()
            await connection.close()
            configure_logging(service="bench", log_format="console", log_level="warning")
    (small_check, _), (large_check, large_republish) = (
        (statistics.median(check), statistics.median(republish)) for check, republish in results.values()
    )
    rows = [
        [f"{size:,}", ms(statistics.median(check)), ms(check[-1]), ms(statistics.median(rep)), ms(rep[-1])]
        for size, (check, rep) in results.items()
    ]
    return Section(
        key="reconcile",
        title=f"9. Reconciliation pass of {unhandled // 2:,} rows against the number of published rows",
        headers=[
            "published rows",
            "check median ms",
            "check max ms",
            "re-publish median ms",
            "re-publish max ms",
        ],
        rows=rows,
        figures={
            "small_check_ms": small_check * 1000,
            "large_check_ms": large_check * 1000,
            "large_over_small": ratio(large_check, small_check),
            "large_republish_ms": large_republish * 1000,
            "published_rows": float(plan.reconcile_rows),
        },
        notes=[
            f"large / small check pass = {fmt(ratio(large_check, small_check))} (target ≤ 2): the pass reads "
            "only the partial index of published, unhandled rows, whatever the number of handled ones.",
            f"{unhandled:,} rows are unhandled (the rest published and handled): a check pass over "
            f"{unhandled // 2:,} whose messages are in Redis (one query, one call of the broker's locate "
            f"script), and a pass that re-publishes {unhandled // 2:,} lost ones (one more UPDATE and one "
            "publish script call; the "
            "private Redis fsyncs its append-only file on every write). Each repeat is undone after it; "
            f"{plan.reconcile_repeats} repeats. `signup bench --only reconcile --reconcile-rows N` sets the "
            "table size.",
        ],
    )
