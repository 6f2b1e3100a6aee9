"""``signup relay`` as a real process: SIGKILL mid-batch loses nothing, SIGTERM exits 0 cleanly."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import (
    Process,
    connect,
    fetch,
    insert_rows,
    queued_messages,
    start_signup,
    unpublished,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("db")


def relay_process(settings, tmp_path, **env: str) -> Process:
    base = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RELAY_METRICS_PORT": "0",
        "LOG_LEVEL": "info",
    }
    return start_signup("relay", env={**base, **env}, log_dir=tmp_path)


# A deferred trigger runs at COMMIT: this one waits for an advisory lock the test holds, so a relay's batch
# transaction stops after its claim and its enqueue, right before the commit.
HOLD_COMMITS = """
CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER hold_commit AFTER UPDATE ON outbox
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit();
"""
RELEASE_COMMITS = "DROP TRIGGER IF EXISTS hold_commit ON outbox; DROP FUNCTION IF EXISTS hold_commit()"


async def test_relay_killed_between_enqueue_and_commit_republishes_the_same_messages(settings, tmp_path):
    connection = await connect(settings)
    event_ids = await insert_rows(connection, 3000)
    await connection.execute(HOLD_COMMITS)
    await connection.execute("SELECT pg_advisory_lock(4242)")

    async def first_batch_in_redis():
        return len(queued_messages(settings.redis_url).all) >= 500

    first = relay_process(settings, tmp_path, RELAY_BATCH_SIZE="500")
    try:
        # Stuck mid-batch, with messages in Redis and the rows still unpublished, when it is killed.
        await wait_for(first_batch_in_redis, timeout=20, what="the first batch in Redis")
        first.kill()
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'signup-relay%' AND datname = current_database()"
        )
    finally:
        first.stop()
        await connection.execute("SELECT pg_advisory_unlock(4242)")
        await connection.execute(RELEASE_COMMITS)
        await connection.close()
    assert await unpublished(settings) == 3000

    second = relay_process(settings, tmp_path, RELAY_BATCH_SIZE="500")
    try:
        await wait_for(lambda: all_published(settings), timeout=20, what="every row published")
    finally:
        assert second.stop() == 0, second.output()
    messages = queued_messages(settings.redis_url).all
    assert {m.message_id for m in messages} == set(event_ids)
    by_id: dict[str, list[Any]] = {}
    for message in messages:
        by_id.setdefault(message.message_id, []).append(message)
    twice = [copies for copies in by_id.values() if len(copies) > 1]
    assert len(twice) == 500, "the killed batch should be published again, under the same ids"
    for copies in twice:
        assert len({repr((c.args, c.options["trace_id"], c.queue_name)) for c in copies}) == 1


async def all_published(settings) -> bool:
    return await unpublished(settings) == 0


async def test_sigterm_during_a_busy_drain_exits_0_with_nothing_marked_that_is_not_in_redis(
    settings, tmp_path
):
    connection = await connect(settings)
    try:
        await insert_rows(connection, 20_000)
    finally:
        await connection.close()
    relay = relay_process(settings, tmp_path, RELAY_BATCH_SIZE="100")

    async def draining():
        return await unpublished(settings) < 19_000

    try:
        await wait_for(draining, timeout=20, what="the relay to be draining")
    finally:
        code = relay.stop()
    assert code == 0, relay.output()
    assert '"relay.stopped"' in relay.output()
    assert await unpublished(settings) > 0, "the drain finished before SIGTERM: the test proved nothing"
    published = {
        str(r["event_id"])
        for r in await fetch(settings, "SELECT event_id FROM outbox WHERE published_at IS NOT NULL")
    }
    in_redis = {m.message_id for m in queued_messages(settings.redis_url).all}
    assert published <= in_redis
