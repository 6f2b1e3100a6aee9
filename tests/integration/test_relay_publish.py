"""The pipelined batch enqueue writes what ``RedisBroker.enqueue`` writes; the metrics endpoint answers."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis

from services.relay.publisher import enqueue_batch
from services.relay.store import OutboxRow
from shared.broker import create_broker
from tests.integration.relay_helpers import add_rows, running_relay, unpublished
from tests.support import free_port, queued_messages, wait_for

pytestmark = pytest.mark.usefixtures("db")


def row(delay_ms: int | None) -> OutboxRow:
    return OutboxRow(
        id=1,
        event_id=uuid.uuid4(),
        actor="send_verify_email",
        queue="critical",
        payload={"username": "alice"},
        trace_id="trace-1",
        delay_ms=delay_ms,
    )


def test_a_pipelined_batch_is_consumed_like_broker_enqueue(settings):
    broker = create_broker(settings)
    due, delayed = row(None), row(0)
    enqueue_batch(broker, [due, delayed])
    consumer = broker.consume("critical", timeout=1000)
    try:
        message = next(iter(consumer))
        assert message is not None
        assert message.message_id == str(due.event_id)
        assert message.args == ({"username": "alice"},)
        assert message.options["trace_id"] == "trace-1"
        consumer.ack(message)
    finally:
        consumer.close()
        broker.close()
    left = queued_messages(settings.redis_url)
    assert left.ready == []
    # delay=0 is still a delayed message: Dramatiq routes any non-None delay through the delay queue.
    assert [m.message_id for m in left.delayed] == [str(delayed.event_id)]


def test_a_batch_calls_the_script_by_its_sha_and_loads_it_again_after_redis_lost_it(settings):
    broker = create_broker(settings)
    admin = redis.Redis.from_url(settings.redis_url)
    try:
        admin.script_flush()  # as after a Redis restart: the script is gone
        first = row(None)
        enqueue_batch(broker, [first])
        assert [m.message_id for m in queued_messages(settings.redis_url).ready] == [str(first.event_id)]
        admin.config_resetstat()
        second = row(None)
        enqueue_batch(broker, [second])
        stats = admin.info("commandstats")
        # One MULTI/EXEC and nothing before it: no SCRIPT EXISTS (redis-py's Script does one per pipeline).
        assert not any(name.startswith("cmdstat_script") for name in stats), stats.keys()
        assert stats["cmdstat_evalsha"]["calls"] == 1 and stats["cmdstat_exec"]["calls"] == 1
        assert len(queued_messages(settings.redis_url).ready) == 2
    finally:
        admin.close()
        broker.close()


async def test_metrics_endpoint_reports_published_and_backlog(settings):
    port = free_port()
    await add_rows(settings, 3)
    async with running_relay(settings, relay_metrics_port=port) as relay:
        relay.metrics.serve(port=port)
        await wait_for(lambda: no_backlog(settings), timeout=5, what="rows published")
        async with httpx.AsyncClient() as client:
            body = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert "outbox_published_total 3.0" in body
    assert "outbox_backlog" in body and "outbox_oldest_unpublished_age_seconds" in body


async def no_backlog(settings) -> bool:
    return await unpublished(settings) == 0
