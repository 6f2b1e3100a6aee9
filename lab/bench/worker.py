"""Sections 4 and 5 of ``signup bench``: claim cost against table size, and one worker's email throughput.

They run on the stack of ``lab.bench.relay`` (fresh database, private Redis, SMTP sink, ``signup worker``).
The claim timed is the relay's own ``store.claim``; the worker is fed through the relay's ``enqueue_batch``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

from lab.bench.model import BenchPlan, Section, fmt, ms, ratio
from lab.bench.relay import connect, reset, stack_settings
from lab.harness.database import insert_outbox_rows, insert_users
from lab.harness.polling import wait_for
from lab.harness.stack import Stack
from services.relay import store
from services.relay.publisher import enqueue_batch
from shared.broker import create_broker
from shared.messages import SendVerifyEmail

CLAIM_BATCH = 500
DUE_ROWS_ID_OFFSET = 10**8  # usernames of the due rows, apart from the published ones


async def _claim_times(connection: Any, *, repeats: int, lookahead_ms: int) -> list[float]:
    """Seconds of each of ``repeats`` claims of a full batch, each in a transaction rolled back after."""
    times = []
    for _ in range(repeats):
        transaction = connection.transaction()
        await transaction.start()
        started = time.perf_counter()
        rows = await store.claim(connection, limit=CLAIM_BATCH, lookahead_ms=lookahead_ms)
        times.append(time.perf_counter() - started)
        await transaction.rollback()
        if len(rows) != CLAIM_BATCH:
            raise RuntimeError(f"claimed {len(rows)} rows, expected {CLAIM_BATCH}")
    return sorted(times)


async def claim_section(stack: Stack, plan: BenchPlan) -> Section:
    """Section 4: one claim of a 500-row batch with a small and a large number of published rows."""
    lookahead = stack_settings(stack).relay_lookahead_ms
    connection = await connect(stack)
    await connection.execute("SET plan_cache_mode = force_custom_plan")  # as the relay's sessions do
    results: dict[int, list[float]] = {}
    try:
        await reset(stack, connection)
        await insert_outbox_rows(connection, CLAIM_BATCH, published=False, first=DUE_ROWS_ID_OFFSET)
        present = 0
        for size in plan.claim_sizes:
            await insert_outbox_rows(connection, size - present, published=True, first=present + 1)
            present = size
            await connection.execute("VACUUM ANALYZE outbox")
            results[size] = await _claim_times(connection, repeats=plan.claim_repeats, lookahead_ms=lookahead)
    finally:
        await reset(stack, connection)
        await connection.close()
    small, large = (statistics.median(results[size]) for size in plan.claim_sizes)
    rows = [
        [f"{size:,}", ms(statistics.median(t)), ms(t[0]), ms(t[-1]), str(len(t))]
        for size, t in results.items()
    ]
    return Section(
        key="claim",
        title=f"4. Claim of a {CLAIM_BATCH}-row batch against the number of published rows",
        headers=["published rows", "median ms", "min ms", "max ms", "claims"],
        rows=rows,
        figures={"small_ms": small * 1000, "large_ms": large * 1000, "large_over_small": ratio(large, small)},
        notes=[
            f"large / small = {fmt(ratio(large, small))} (target ≤ 2). Each claim is the relay's own "
            "`store.claim` (an UPDATE of the rows a SELECT … FOR UPDATE SKIP LOCKED takes off the partial "
            "index), rolled back after.",
            "Published rows are inserted as published and the table is vacuumed and analysed first: the "
            "steady state once autovacuum has run. Before a vacuum, rows just published still have entries "
            "in the partial index that a claim must step over.",
        ],
    )


def _rows(count: int) -> list[store.OutboxRow]:
    return [
        store.OutboxRow(
            id=n,
            event_id=uuid.uuid4(),
            actor=SendVerifyEmail.actor,
            queue=SendVerifyEmail.queue,
            payload={"username": f"u_{n}"},
            trace_id=None,
            delay_ms=None,
        )
        for n in range(1, count + 1)
    ]


async def worker_section(stack: Stack, plan: BenchPlan) -> Section:
    """Section 5: ``plan.worker_emails`` messages queued at once, drained by one ``signup worker``."""
    settings = stack_settings(stack)
    n = plan.worker_emails
    connection = await connect(stack)
    try:
        await reset(stack, connection)
        await insert_users(connection, n)
    finally:
        await connection.close()
    await stack.restart("worker")
    before = len(stack.sink.snapshot())
    broker = create_broker(settings)
    rows = _rows(n)
    started = time.time()
    try:
        for first in range(0, n, CLAIM_BATCH):
            await asyncio.to_thread(enqueue_batch, broker, rows[first : first + CLAIM_BATCH])
    finally:
        broker.close()

    async def all_sent() -> bool:
        return len(stack.sink.snapshot()) - before >= n

    await wait_for(all_sent, timeout=600, what="the worker to send every email")
    received = sorted(d.received_at for d in stack.sink.snapshot()[before:])
    total = received[-1] - started
    steady = (n - 1) / (received[-1] - received[0]) if n > 1 and received[-1] > received[0] else None
    threads = settings.worker_threads
    return Section(
        key="worker",
        title=f"5. One worker process ({threads} threads): {n:,} emails",
        headers=["emails", "enqueue → last email s", "emails/s", "first → last emails/s"],
        rows=[[str(n), f"{total:.2f}", f"{n / total:.1f}", fmt(steady, 1)]],
        figures={"emails_per_s": n / total, "steady_emails_per_s": steady, "threads": float(threads)},
        notes=[],
    )
