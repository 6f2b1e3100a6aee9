"""The relay's batch enqueue is consumed like ``broker.enqueue``, in one script call; the metrics answer."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis
from dramatiq.middleware import Middleware

from services.relay.publisher import enqueue_batch, to_message
from services.relay.store import OutboxRow
from shared.broker import create_broker
from tests.support import add_rows, free_port, queued_messages, running_relay, unpublished, wait_for

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


def test_a_batch_is_one_script_call_and_a_single_enqueue_reloads_a_lost_script(settings):
    broker = create_broker(settings)
    admin = redis.Redis.from_url(settings.redis_url)
    try:
        enqueue_batch(broker, [row(None)])  # redis-py loads the script on its first use
        admin.config_resetstat()
        enqueue_batch(broker, [row(None) for _ in range(50)])
        stats = admin.info("commandstats")
        # The messages and their locators, all in one script call: no command per message on the wire.
        assert stats["cmdstat_evalsha"]["calls"] == 1, stats.keys()
        assert not any(name.startswith(("cmdstat_script", "cmdstat_exec")) for name in stats), stats.keys()
        admin.script_flush()  # as after a Redis restart: the script is gone
        single = row(None)
        broker.enqueue(to_message(single))
        assert str(single.event_id) in {m.message_id for m in queued_messages(settings.redis_url).ready}
        assert len(queued_messages(settings.redis_url).ready) == 52
    finally:
        admin.close()
        broker.close()


class EnqueueRecorder(Middleware):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, int | None]] = []

    def before_enqueue(self, broker, message, delay):
        self.calls.append(("before", message.message_id, message.queue_name, delay))

    def after_enqueue(self, broker, message, delay):
        self.calls.append(("after", message.message_id, message.queue_name, delay))


def test_a_batch_runs_the_enqueue_hooks_of_middleware_that_has_them(settings):
    """A batch skips middleware whose enqueue hooks are Dramatiq's no-ops, not those that do something."""
    recorder = EnqueueRecorder()
    broker = create_broker(settings, extra_middleware=[recorder])
    due, delayed = row(None), row(250)
    try:
        enqueue_batch(broker, [due, delayed])
    finally:
        broker.close()
    expected = [(str(due.event_id), "critical", None), (str(delayed.event_id), "critical.DQ", 250)]
    assert recorder.calls == [("before", *e) for e in expected] + [("after", *e) for e in expected]


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
