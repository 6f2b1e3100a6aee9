"""The relay against real PostgreSQL and Redis: nothing skipped, nothing published twice, wake-ups."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.relay import store
from services.relay.relay import build_relay
from tests.support import (
    add_rows,
    all_published,
    connect,
    fetch,
    insert_rows,
    queued_messages,
    running_relay,
    running_relays,
    unpublished,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("db")


def assert_each_once(settings, event_ids: list[str]) -> None:
    counts = queued_messages(settings.redis_url).count_by_id()
    assert set(counts) == set(event_ids), (len(counts), len(event_ids))
    duplicates = {k: v for k, v in counts.items() if v != 1}
    assert not duplicates, f"{len(duplicates)} events enqueued more than once"


async def test_rows_committed_out_of_order_are_all_published(settings):
    # 20 transactions take their ids in order, then commit in reverse order while the relay runs: a
    # "last seen id" cursor would skip every transaction but the last.
    connections = [await connect(settings) for _ in range(20)]
    transactions = [c.transaction() for c in connections]
    event_ids: list[str] = []
    async with running_relay(settings, relay_batch_size=50):
        for connection, transaction in zip(connections, transactions, strict=True):
            await transaction.start()
            event_ids += await insert_rows(connection, 100)
        for transaction in reversed(transactions):
            await transaction.commit()
            await asyncio.sleep(0.02)
        await wait_for(lambda: all_published(settings), timeout=15, what="every row published")
    for connection in connections:
        await connection.close()
    assert len(event_ids) == 2000
    assert_each_once(settings, event_ids)


@pytest.mark.parametrize("relays", [2, 4])
async def test_concurrent_relays_enqueue_each_event_exactly_once(settings, relays):
    event_ids = await add_rows(settings, 5000)
    async with running_relays(settings, relays, relay_batch_size=200):
        for _chunk in range(5):
            event_ids += await add_rows(settings, 1000)
        await wait_for(lambda: all_published(settings), timeout=30, what="every row published")
    assert len(event_ids) == 10_000
    assert_each_once(settings, event_ids)


async def test_idle_relay_publishes_a_new_row_on_its_notify_not_its_poll(settings, log_tee):
    async with running_relay(settings, relay_poll_interval_ms=60_000):
        await wait_for(lambda: listener_pid(settings), timeout=5, what="the LISTEN connection")
        warm_up = await settle(settings)
        start = len(log_tee.lines)
        [event_id] = await add_rows(settings, 1)
        # Well within the minute the relay would otherwise sleep until its next poll.
        await wait_for(lambda: all_published(settings), timeout=20, what="publish via NOTIFY")
    assert_each_once(settings, [warm_up, event_id])
    lines = [json.loads(line) for line in log_tee.lines[start:] if '"relay.' in line]
    [event_line] = [line for line in lines if line["event"] == "relay.event_published"]
    assert (event_line["event_id"], event_line["request_id"], event_line["level"]) == (
        event_id,
        "trace-1",
        "info",
    )
    [batch] = [line for line in lines if line["event"] == "relay.batch_published"]
    assert batch["count"] == 1 and batch["first_id"] == batch["last_id"] and batch["duration_ms"] >= 0


async def test_relay_polls_when_it_cannot_listen(settings):
    async with running_relay(settings, relay_poll_interval_ms=500, listen=False):
        [event_id] = await add_rows(settings, 1)
        await wait_for(lambda: all_published(settings), timeout=0.5 + 1.0, what="publish by polling")
    assert_each_once(settings, [event_id])


async def test_listen_connection_is_re_established_after_it_is_killed(settings):
    async with running_relay(settings, relay_poll_interval_ms=60_000):
        old = await wait_for(lambda: listener_pid(settings), timeout=5, what="the LISTEN connection")
        await fetch(settings, "SELECT pg_terminate_backend($1)", old)

        async def new_listener():
            pid = await listener_pid(settings)
            return pid if pid and pid != old else None

        await wait_for(new_listener, timeout=5, what="a new LISTEN connection")
        warm_up = await settle(settings)
        [event_id] = await add_rows(settings, 1)
        await wait_for(lambda: all_published(settings), timeout=1.0, what="publish via NOTIFY")
    assert_each_once(settings, [warm_up, event_id])


async def settle(settings) -> str:
    """Publish one warm-up row and wait for it, so that the relay is idle on its 60 s poll afterwards.

    Without it the row under test could be taken by the relay's first claim (or the wake-up that follows
    a reconnect) and the test would pass without NOTIFY doing anything.
    """
    [warm_up] = await add_rows(settings, 1)
    await wait_for(lambda: all_published(settings), timeout=5, what="the warm-up row published")
    return warm_up


async def listener_pid(settings) -> int | None:
    rows = await fetch(
        settings,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'signup-relay-listen' "
        "AND datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    return rows[0]["pid"] if rows else None


async def test_lookahead_publishes_soon_due_rows_as_delayed_messages(settings):
    [later] = await add_rows(settings, 1, due_in_s=60)
    [soon] = await add_rows(settings, 1, due_in_s=3)
    [due_at] = await fetch(
        settings, "SELECT extract(epoch FROM available_at) * 1000 AS ms FROM outbox WHERE event_id = $1", soon
    )
    async with running_relay(settings, relay_lookahead_ms=10_000, relay_poll_interval_ms=200):

        async def soon_published():
            return (await unpublished(settings)) == 1

        await wait_for(soon_published, timeout=2, what="the row due in 3 s to be published at once")
        await asyncio.sleep(0.6)  # a few more polls: the row due in 60 s must stay put
        assert await unpublished(settings) == 1
    messages = queued_messages(settings.redis_url)
    assert messages.ready == []
    [message] = messages.delayed
    assert message.message_id == soon
    assert message.queue_name == "critical.DQ"
    assert abs(message.options["eta"] - float(due_at["ms"])) < 1000
    [row] = await fetch(settings, "SELECT published_at FROM outbox WHERE event_id = $1", later)
    assert row["published_at"] is None


async def test_a_relay_started_on_an_empty_outbox_plans_each_claim_for_the_backlog_it_finds(settings):
    # PostgreSQL switches a prepared statement to a generic plan after five runs when that looks no dearer.
    # Made while the outbox was empty, that plan read the whole table for every batch once a backlog came
    # (70-140 ms per 500-row claim in the bench's drain, against ~10 ms). The relay's sessions plan every
    # claim for the table as it is, and the claim's ORDER BY is the partial index's own order (ORDER BY id
    # sorted the whole backlog for every batch).
    relay = build_relay(settings)
    await relay.connect()
    try:
        for _ in range(8):
            assert await relay.publish_batch() == 0
        await add_rows(settings, 3000)
        while await relay.publish_batch():
            pass
        async with relay._pool.acquire() as connection:
            [plans] = await connection.fetch(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
                store.CLAIM,
            )
            await add_rows(settings, 3000)  # a backlog beside the published rows, as after an outage
            await connection.execute("ANALYZE outbox")
            plan = "\n".join(r[0] for r in await connection.fetch("EXPLAIN " + store.CLAIM, 0, 500))
    finally:
        await relay.close()
    assert plans["generic_plans"] == 0
    assert plans["custom_plans"] >= 8 + 3000 // settings.relay_batch_size
    # The batch comes off the partial index in its order: no scan of the table, no sort of the backlog.
    assert "Index Scan using outbox_unpublished_idx" in plan, plan
    assert "Seq Scan" not in plan and "Sort" not in plan, plan
