"""The relay through outages: Redis stopped, PostgreSQL connections killed; and the purge."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.support import (
    add_rows,
    all_published,
    fetch,
    queued_messages,
    running_relay,
    unpublished,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("db")


async def test_redis_outage_is_survived_and_every_row_published_once(settings, redis_server, log_tee):
    start = len(log_tee.lines)
    event_ids: list[str] = []
    async with running_relay(settings, max_backoff_s=1.0) as relay:
        redis_server.stop()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                event_ids += await add_rows(settings, 20)
                await asyncio.sleep(0.5)
            failed = await fetch(settings, "SELECT count(*) AS n FROM outbox WHERE attempts > 0")
            assert failed[0]["n"] > 0, "failed attempts were not counted on the rows"
            [row] = await fetch(settings, "SELECT last_error FROM outbox ORDER BY id LIMIT 1")
            assert row["last_error"]
            assert await unpublished(settings) == len(event_ids)
        finally:
            redis_server.start()
        await wait_for(lambda: all_published(settings), timeout=10, what="every row published after Redis")
        assert relay.metrics.errors._value.get() > 0
    counts = queued_messages(settings.redis_url).count_by_id()
    assert set(counts) == set(event_ids)
    assert set(counts.values()) == {1}
    logged = [json.loads(line) for line in log_tee.lines[start:] if "relay.publish_failed" in line]
    assert logged and logged[0]["level"] == "error" and logged[0]["count"] >= 1


async def test_postgresql_connections_killed_mid_drain_lose_nothing(settings):
    event_ids = await add_rows(settings, 5000)
    async with running_relay(settings, relay_batch_size=100, max_backoff_s=0.5):
        for _ in range(3):
            await wait_for(lambda: busy(settings), timeout=5, what="a relay connection")
            await fetch(
                settings,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'signup-relay%' AND datname = current_database()",
            )
            await asyncio.sleep(0.05)
        await wait_for(lambda: all_published(settings), timeout=20, what="every row published")
    counts = queued_messages(settings.redis_url).count_by_id()
    assert set(counts) == set(event_ids)


async def busy(settings) -> bool:
    rows = await fetch(
        settings,
        "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'signup-relay%' "
        "AND datname = current_database()",
    )
    return bool(rows)


async def test_purge_deletes_only_old_handled_rows(settings):
    await add_rows(settings, 2500, due_in_s=3600)  # not due: the relay leaves them unpublished
    for statement in (
        "UPDATE outbox SET published_at = now() - interval '200 hours', handled_at = now() - interval "
        "'199 hours' WHERE id <= 2100",
        "UPDATE outbox SET published_at = now() - interval '1 hour' WHERE id > 2100 AND id <= 2290",
        # Old, published, never handled: reconciliation may still need them.
        "UPDATE outbox SET published_at = now() - interval '200 hours' WHERE id > 2290 AND id <= 2300",
        "UPDATE outbox SET created_at = now() - interval '400 hours' WHERE id > 2300",
    ):
        await fetch(settings, statement)
    async with running_relay(
        settings, outbox_retention_hours=168, purge_interval_s=0.2, reconcile_interval_ms=0
    ):

        async def old_gone():
            rows = await fetch(settings, "SELECT count(*) AS n FROM outbox WHERE id <= 2100")
            return rows[0]["n"] == 0

        await wait_for(old_gone, timeout=10, what="old published rows purged")
    rows = await fetch(settings, "SELECT min(id) AS lo, count(*) AS n FROM outbox")
    assert (rows[0]["lo"], rows[0]["n"]) == (2101, 400)
    assert await unpublished(settings) == 200
