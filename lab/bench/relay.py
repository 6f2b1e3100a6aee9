"""Section 3 of ``signup bench``, relay drain, and the stack helpers sections 4 and 5 share.

Sections 3 to 5 share one ``Stack`` running only ``signup worker`` (stopped for sections 3 and 4, so that
nothing consumes the drained messages): its fresh database, private Redis and SMTP sink.
The relay runs in this process, built by ``build_relay`` exactly as ``signup relay`` builds it, and the
worker is fed through the relay's own ``enqueue_batch``: the bench measures the shipped code, not a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import asyncpg
import redis

from lab.bench.model import BenchPlan, Section, fmt, ratio
from lab.harness.database import count_unpublished, insert_outbox_rows
from lab.harness.polling import wait_for
from lab.harness.queues import queued_messages
from lab.harness.stack import Stack
from services.relay import store
from services.relay.publisher import to_message
from services.relay.relay import build_relay
from shared.broker import create_broker
from shared.database import asyncpg_dsn
from shared.settings import Settings, load_settings

_ROWS = "SELECT id, event_id, actor, queue, payload::text AS payload, trace_id FROM outbox ORDER BY id"


def stack_settings(stack: Stack) -> Settings:
    return load_settings(stack.env, relay_metrics_port=0, relay_poll_interval_ms=50)


async def connect(stack: Stack) -> Any:
    return await asyncpg.connect(asyncpg_dsn(stack.database_url), timeout=10)


async def reset(stack: Stack, connection: Any) -> None:
    await connection.execute("TRUNCATE users, outbox, verify_emails, idempotency_keys CASCADE")
    redis.Redis.from_url(stack.redis.url).flushdb()


async def _plain_loop(settings: Settings, rows: list[store.OutboxRow]) -> float:
    """Seconds a plain ``broker.enqueue`` loop takes for one message per row (in a thread, like the relay)."""
    broker = create_broker(settings)

    def loop() -> float:
        started = time.perf_counter()
        for row in rows:
            broker.enqueue(to_message(row))
        return time.perf_counter() - started

    try:
        return await asyncio.to_thread(loop)
    finally:
        broker.close()


async def _relay_drain(settings: Settings, connection: Any, count: int) -> float:
    """Seconds from the commit of ``count`` new rows to the relay having published them all."""
    relay = build_relay(settings)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.5)  # the relay's pool and LISTEN connection are up
        await insert_outbox_rows(connection, count, published=False)
        started = time.perf_counter()

        async def drained() -> bool:
            return await count_unpublished(connection) == 0

        await wait_for(drained, timeout=600, what="the relay to drain the backlog")
        return time.perf_counter() - started
    finally:
        relay.stop()
        with contextlib.suppress(Exception):
            await task


async def drain_section(stack: Stack, plan: BenchPlan) -> Section:
    """Section 3: a backlog of ``plan.drain_rows`` rows through the relay against a plain enqueue loop."""
    settings = stack_settings(stack)
    connection = await connect(stack)
    try:
        await reset(stack, connection)
        await insert_outbox_rows(connection, plan.drain_rows, published=False)
        records = await connection.fetch(_ROWS)
        rows = [
            store.OutboxRow(**{**dict(r), "payload": json.loads(r["payload"]), "delay_ms": None})
            for r in records
        ]
        plain_s = await _plain_loop(settings, rows)
        await reset(stack, connection)
        relay_s = await _relay_drain(settings, connection, plan.drain_rows)
        queued = len(queued_messages(stack.redis.url).ready)
    finally:
        await reset(stack, connection)
        await connection.close()
    n = plan.drain_rows
    relay_rate, plain_rate = n / relay_s, n / plain_s
    return Section(
        key="drain",
        title=f"3. Relay drain of a {n:,}-row backlog",
        headers=["publisher", "rows", "seconds", "events/s"],
        rows=[
            ["plain broker.enqueue loop", str(n), f"{plain_s:.2f}", f"{plain_rate:.0f}"],
            ["relay (claim and mark, pipeline; two lanes)", str(n), f"{relay_s:.2f}", f"{relay_rate:.0f}"],
        ],
        figures={
            "relay_per_s": relay_rate,
            "plain_per_s": plain_rate,
            "relay_over_plain": ratio(relay_rate, plain_rate),
            "messages_in_redis": float(queued),
        },
        notes=[
            f"relay / plain loop = {fmt(ratio(relay_rate, plain_rate))} (target ≥ 0.90); {queued:,} messages "
            "were in Redis after the relay's run.",
            "The relay's time runs from the commit of the backlog (one INSERT, one NOTIFY) until no row is "
            "unpublished (polled every 50 ms); the loop's covers the enqueues only, no database work. The "
            "private Redis fsyncs its append-only file on every write (as in the lab), for both.",
        ],
    )
