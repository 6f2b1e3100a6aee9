"""The pipelined batch enqueue writes what ``RedisBroker.enqueue`` writes; the metrics endpoint answers."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import redis
from dramatiq import Message
from dramatiq.middleware import Middleware

from services.relay.publisher import enqueue_batch, to_message
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


def test_a_batch_writes_the_keys_and_values_dramatiqs_script_writes_for_each_message(settings):
    """``store_in`` writes Dramatiq's layout with plain commands: replaying what a batch stored through the
    broker's own enqueue (dispatch.lua, one call per message) must leave Redis exactly as the batch did."""
    broker = create_broker(settings)
    rows = [row(None), row(None), row(1500), row(None)]
    admin: Any = redis.Redis.from_url(settings.redis_url)  # redis-py's reply types are unions
    try:
        enqueue_batch(broker, rows)
        batch = redis_contents(admin)
        stored = [  # (queue, redis id, data) in the order each queue lists them
            (key.split(":", 1)[1], redis_id, admin.hget(f"{key}.msgs", redis_id))
            for key in ("dramatiq:critical", "dramatiq:critical.DQ")
            for redis_id in admin.lrange(key, 0, -1)
        ]
        # Each queue lists its messages in the rows' order (the delayed one is on the delay queue).
        listed = [Message.decode(data).message_id for _, _, data in stored]
        assert listed == [str(r.event_id) for r in rows if r.delay_ms is None] + [str(rows[2].event_id)]
        admin.flushdb()
        for queue_name, redis_id, data in stored:
            broker.do_enqueue(queue_name, redis_id.decode(), data)
        assert redis_contents(admin) == batch
    finally:
        admin.close()
        broker.close()


def redis_contents(client: Any) -> dict[bytes, object]:
    """Every key with its value; a sorted set's members without their scores (a heartbeat's timestamp)."""
    read = {
        b"hash": client.hgetall,
        b"list": lambda key: client.lrange(key, 0, -1),
        b"zset": lambda key: sorted(client.zrange(key, 0, -1)),
        b"set": client.smembers,
        b"string": client.get,
    }
    return {key: (kind, read[kind](key)) for key in client.scan_iter() for kind in [client.type(key)]}


def test_a_batch_is_one_multi_exec_without_a_script_and_a_single_enqueue_reloads_a_lost_script(settings):
    broker = create_broker(settings)
    admin = redis.Redis.from_url(settings.redis_url)
    try:
        admin.config_resetstat()
        enqueue_batch(broker, [row(None) for _ in range(50)])
        stats = admin.info("commandstats")
        assert stats["cmdstat_exec"]["calls"] == 1
        assert not any(name.startswith(("cmdstat_eval", "cmdstat_script")) for name in stats), stats.keys()
        # The heartbeat, the messages (one HSET and one RPUSH for the queue), the locators: none per message.
        assert stats["cmdstat_hset"]["calls"] == 2 and stats["cmdstat_zadd"]["calls"] == 1
        admin.script_flush()  # as after a Redis restart: Dramatiq's script is gone
        single = row(None)
        broker.enqueue(to_message(single))
        assert str(single.event_id) in {m.message_id for m in queued_messages(settings.redis_url).ready}
        assert len(queued_messages(settings.redis_url).ready) == 51
        # Once loaded, a single enqueue is one EVALSHA in one MULTI/EXEC: no SCRIPT EXISTS round trip first.
        admin.config_resetstat()
        broker.enqueue(to_message(row(None)))
        stats = admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1 and stats["cmdstat_exec"]["calls"] == 1, stats.keys()
        assert not any(name.startswith("cmdstat_script") for name in stats), stats.keys()
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
