"""Reconciliation on real PostgreSQL, Redis and SMTP: a message Redis lost is published again and emailed
once; one that waits out a backoff, is delayed or is being processed is left alone (DESIGN §13).

Each test runs the real relay (in this event loop) and the real worker (in this process), and counts the
worker's deliveries per message id and the Message-IDs that reached the SMTP sink.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
import redis
from dramatiq import Broker, Middleware, Worker
from dramatiq.broker import MessageProxy

from services.relay.relay import Relay
from services.worker.wiring import build_broker
from shared.settings import Settings
from signup_cli.trace import timeline
from tests.support import (
    LogTee,
    RedisServer,
    SmtpSink,
    add_user,
    fetch,
    logged,
    running_relay,
    signup_cli,
    wait_for,
)

GRACE_MS = 300
INTERVAL_MS = 100


class Deliveries(Middleware):
    """How many times the worker started processing each message id."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self.counts[message.message_id] += 1


@contextmanager
def running_worker(settings: Settings) -> Iterator[Deliveries]:
    broker, _ = build_broker(settings)
    deliveries = Deliveries()
    broker.add_middleware(deliveries)
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        yield deliveries
    finally:
        worker.stop()
        broker.close()


@pytest.fixture
def rsettings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings,
        reconcile_grace_ms=GRACE_MS,
        reconcile_interval_ms=INTERVAL_MS,
        worker_min_backoff_ms=100,
        worker_max_backoff_ms=2000,
        worker_threads=2,
    )


async def add_signup(settings: Settings, engine: Any, username: str = "alice", *, due_in_s: float = 0) -> str:
    """A user and the outbox row of their email, as the API commits them; returns the event id."""
    await add_user(engine, username)
    event_id = str(uuid.uuid4())
    await fetch(
        settings,
        "INSERT INTO outbox (event_id, actor, queue, payload, trace_id, available_at) "
        "VALUES ($1, 'send_verify_email', 'critical', jsonb_build_object('username', $2::text), $3, "
        "now() + make_interval(secs => $4::float8))",
        uuid.UUID(event_id),
        username,
        f"trace-{username}",
        due_in_s,
    )
    return event_id


async def row(settings: Settings, event_id: str) -> Any:
    [record] = await fetch(
        settings,
        "SELECT published_at, handled_at, republish_count FROM outbox WHERE event_id = $1",
        uuid.UUID(event_id),
    )
    return record


def passes(relay: Relay) -> float:
    return relay.metrics.registry.get_sample_value("outbox_reconcile_passes_total") or 0.0


async def more_passes(relay: Relay, count: int) -> None:
    """Wait until ``count`` more reconciliation passes have completed."""
    target = passes(relay) + count

    async def done() -> bool:
        return passes(relay) >= target

    await wait_for(done, timeout=20, what=f"{count} reconciliation passes")


def message_ids(sink: SmtpSink) -> list[str]:
    return [delivery.message_id for delivery in sink.snapshot()]


async def emailed(sink: SmtpSink, event_id: str) -> list[str]:
    async def probe() -> list[str]:
        return [m for m in message_ids(sink) if m == f"<{event_id}@signup-outbox>"]

    return await wait_for(probe, timeout=20, what="the email")


async def handled(settings: Settings, event_id: str) -> None:
    async def probe() -> bool:
        return (await row(settings, event_id))["handled_at"] is not None

    await wait_for(probe, timeout=20, what="handled_at set")


async def passes_until_handled(settings: Settings, relay: Relay, sink: SmtpSink, event_id: str) -> float:
    """Wait for the email and the handled mark; return how many passes ran meanwhile (then 3 more run)."""
    before = passes(relay)
    await emailed(sink, event_id)
    await handled(settings, event_id)
    during = passes(relay) - before
    await more_passes(relay, 3)
    return during


async def in_redis(settings: Settings, event_id: str) -> None:
    client = redis.Redis.from_url(settings.redis_url)

    async def probe() -> bool:
        return bool(client.hexists("signup:locators", event_id))

    try:
        await wait_for(probe, timeout=20, what="the message in Redis")
    finally:
        client.close()


def lose(route: str, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        if route == "flushall":
            client.flushall()
        elif route == "queue_key":
            assert client.delete("signup:q:critical") == 1  # the queue's stream: the locators stay
    finally:
        client.close()
    if route == "restart":
        redis_server.stop()  # no AOF, no RDB: it comes back empty
        redis_server.start()


@pytest.mark.parametrize("route", ["flushall", "restart", "queue_key"])
async def test_a_message_redis_lost_is_published_again_and_emailed_once(
    route: str, rsettings: Settings, db: Any, sink: SmtpSink, redis_server: RedisServer, log_tee: LogTee
) -> None:
    since = len(log_tee.lines)
    event_id = await add_signup(rsettings, db)
    async with running_relay(rsettings) as relay:
        await in_redis(rsettings, event_id)
        # Waiting in its queue with no worker running, past the grace period: left alone.
        await asyncio.sleep(GRACE_MS / 1000)
        await more_passes(relay, 3)
        assert (await row(rsettings, event_id))["republish_count"] == 0

        lose(route, redis_server)

        async def republished() -> bool:
            return bool((await row(rsettings, event_id))["republish_count"] > 0)

        await wait_for(republished, timeout=20, what="the re-publish")
        with running_worker(rsettings) as deliveries:
            await emailed(sink, event_id)
            await handled(rsettings, event_id)
            await more_passes(relay, 5)
    assert message_ids(sink) == [f"<{event_id}@signup-outbox>"]
    assert deliveries.counts == {event_id: 1}
    assert (await row(rsettings, event_id))["republish_count"] == 1
    assert relay.metrics.registry.get_sample_value("outbox_republished_total") == 1
    [line] = logged(log_tee, "relay.event_republished", since=since)
    assert (line["request_id"], line["event_id"]) == ("trace-alice", event_id)
    found = await timeline(rsettings, "alice")
    assert found is not None
    steps = [what for _, what in found[0]]
    assert any("re-published by reconciliation" in what and "times=1" in what for what in steps), steps
    assert any("handled by a worker" in what for what in steps), steps


async def test_a_message_in_retry_backoff_is_not_published_again(
    rsettings: Settings, db: Any, sink: SmtpSink
) -> None:
    settings = msgspec.structs.replace(rsettings, worker_min_backoff_ms=3000, worker_max_backoff_ms=3000)
    sink.script.append("451 4.3.0 try again later")
    event_id = await add_signup(settings, db)
    async with running_relay(settings) as relay:
        with running_worker(settings) as deliveries:

            async def refused() -> bool:
                return bool(sink.attempts)

            await wait_for(refused, timeout=20, what="the first, refused attempt")
            during = await passes_until_handled(settings, relay, sink, event_id)
    assert during >= 10, f"only {during} passes ran during the backoff"
    assert message_ids(sink) == [f"<{event_id}@signup-outbox>"]
    assert deliveries.counts == {event_id: 2}  # the refused attempt and its retry, nothing more
    assert (await row(settings, event_id))["republish_count"] == 0


async def test_a_delayed_message_is_not_published_again(rsettings: Settings, db: Any, sink: SmtpSink) -> None:
    event_id = await add_signup(rsettings, db, due_in_s=3)  # within RELAY_LOOKAHEAD_MS: a delayed message
    async with running_relay(rsettings) as relay:
        with running_worker(rsettings) as deliveries:
            await in_redis(rsettings, event_id)
            published = time.monotonic()
            during = await passes_until_handled(rsettings, relay, sink, event_id)
    assert time.monotonic() - published > 2, "the message was not delayed"
    assert during >= 10, f"only {during} passes ran during the delay"
    assert message_ids(sink) == [f"<{event_id}@signup-outbox>"]
    assert deliveries.counts == {event_id: 1}
    assert (await row(rsettings, event_id))["republish_count"] == 0


class SlowSink(SmtpSink):
    """Takes 3 s to accept each message: the worker is processing it all that time."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(3)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def slow_sink() -> Iterator[SlowSink]:
    sink = SlowSink()
    sink.start()
    yield sink
    sink.stop()


async def test_a_message_being_processed_is_not_published_again(
    rsettings: Settings, db: Any, slow_sink: SlowSink
) -> None:
    settings = msgspec.structs.replace(rsettings, smtp_host=slow_sink.host, smtp_port=slow_sink.port)
    event_id = await add_signup(settings, db)
    async with running_relay(settings) as relay:
        with running_worker(settings) as deliveries:

            async def processing() -> bool:
                return deliveries.counts[event_id] == 1

            await wait_for(processing, timeout=20, what="the worker to start on the message")
            during = await passes_until_handled(settings, relay, slow_sink, event_id)
    assert during >= 10, f"only {during} passes ran while the worker processed the message"
    assert message_ids(slow_sink) == [f"<{event_id}@signup-outbox>"]
    assert deliveries.counts == {event_id: 1}
    assert (await row(settings, event_id))["republish_count"] == 0


async def test_a_dead_letter_stays_dead_until_replayed_and_is_then_watched_again(
    rsettings: Settings, db: Any, sink: SmtpSink
) -> None:
    sink.script.append("550 5.1.1 mailbox unavailable")
    event_id = await add_signup(rsettings, db)
    async with running_relay(rsettings) as relay:
        with running_worker(rsettings) as deliveries:
            await handled(rsettings, event_id)  # the dead letter counts as handled
            await more_passes(relay, 5)
            assert deliveries.counts == {event_id: 1} and message_ids(sink) == []

            replayed = await asyncio.to_thread(signup_cli, rsettings, "dlq", "replay", event_id)
            assert replayed.returncode == 0, replayed.stderr
            await emailed(sink, event_id)
            await handled(rsettings, event_id)
            await more_passes(relay, 3)
    assert message_ids(sink) == [f"<{event_id}@signup-outbox>"]
    assert deliveries.counts == {event_id: 2}
    assert (await row(rsettings, event_id))["republish_count"] == 0
