"""Idle consumers are woken by the enqueue itself, on a real Redis (``shared.wakeup``).

Every broker here waits up to ``FALLBACK_MS`` (10 s) for a wake-up token, so work that arrives "well before
the fallback" (under half of it) can only have been announced by a token: the assertions compare against
the fallback, not against a tight timing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
import msgspec
import pytest
import redis
from dramatiq import Worker
from dramatiq.middleware import AsyncIO, CurrentMessage

from services.relay.publisher import enqueue_batch
from services.relay.store import OutboxRow
from shared.broker import HEARTBEAT_TIMEOUT_MS, SignupRedisBroker, create_broker
from shared.settings import Settings
from shared.wakeup import wake_key
from tests.support import RedisServer, wait_until

FALLBACK_MS = 10_000
WELL_BEFORE_S = FALLBACK_MS / 1000 / 2


class Seen:
    """When each message (by message id) reached an actor, in ``time.monotonic()`` seconds."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def add(self, message_id: str) -> None:
        with self.lock:
            self.at.setdefault(message_id, []).append(time.monotonic())

    def wait(
        self, message_id: str, *, count: int = 1, timeout: float = FALLBACK_MS / 1000 * 2
    ) -> list[float]:
        def arrived() -> list[float]:
            with self.lock:
                times = list(self.at.get(message_id, []))
            return times if len(times) >= count else []

        return wait_until(arrived, timeout=timeout, what=f"message {message_id}")


@pytest.fixture
def wake_settings(settings: Settings, db: object) -> Settings:
    return msgspec.structs.replace(
        settings, worker_wake_fallback_ms=FALLBACK_MS, worker_min_backoff_ms=200, worker_max_backoff_ms=200
    )


def blocked_clients(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return int(client.info("clients")["blocked_clients"])
    finally:
        client.close()


@contextmanager
def running(
    settings: Settings,
    seen: Seen,
    *,
    queues: tuple[str, ...] = ("wake_a",),
    hold: threading.Event | None = None,
    threads: int = 1,
) -> Iterator[SignupRedisBroker]:
    """A worker (``threads`` threads, prefetch 1) whose actor on each queue records the message; it fails a
    message whose first argument is "fail" once, and blocks on ``hold`` when one is given. Yields once every
    consumer (one per queue, one per delay queue) is blocked on its wake-up list."""
    broker = create_broker(settings)
    assert isinstance(broker, SignupRedisBroker)
    # The actors here are plain functions. Without the AsyncIO middleware, two workers in this one process
    # do not share Dramatiq's one global event-loop thread: the first worker's (not a daemon) would outlive
    # the second's shutdown and keep pytest from exiting.
    broker.middleware = [m for m in broker.middleware if not isinstance(m, AsyncIO)]
    for queue in queues:

        def record(*args: Any, queue: str = queue) -> None:
            message = CurrentMessage.get_current_message()
            assert message is not None
            seen.add(message.message_id)
            if hold is not None:
                hold.wait(30)
            if args and args[0] == "fail" and message.options.get("retries", 0) == 0:
                raise RuntimeError("first attempt fails")

        dramatiq.Actor(
            record, broker=broker, actor_name=f"record_{queue}", queue_name=queue, priority=0, options={}
        )
    before = blocked_clients(settings)
    worker = Worker(broker, worker_timeout=50, worker_threads=threads)
    worker.queue_prefetch = 1
    worker.start()
    try:
        wait_until(
            lambda: blocked_clients(settings) >= before + 2 * len(queues), timeout=10, what="idle consumers"
        )
        yield broker
    finally:
        worker.stop()
        broker.close()


def message(queue: str = "wake_a", *args: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=queue, actor_name=f"record_{queue}", args=args, kwargs={}, options={})


def test_an_enqueue_wakes_an_idle_consumer_well_before_the_fallback(wake_settings) -> None:
    seen = Seen()
    with running(wake_settings, seen) as broker:
        sent_at = time.monotonic()
        sent = broker.enqueue(message())
        assert seen.wait(sent.message_id)[0] - sent_at < WELL_BEFORE_S


def test_the_relays_batch_wakes_an_idle_consumer(wake_settings) -> None:
    seen = Seen()
    row = OutboxRow(
        id=1,
        event_id=uuid.uuid4(),
        actor="record_wake_a",
        queue="wake_a",
        payload={},
        trace_id=None,
        delay_ms=None,
    )
    with running(wake_settings, seen) as broker:
        sent_at = time.monotonic()
        enqueue_batch(broker, [row])
        assert seen.wait(str(row.event_id))[0] - sent_at < WELL_BEFORE_S


def test_a_message_that_arrives_between_the_fetch_and_the_block_is_not_missed(wake_settings) -> None:
    """The token persists in the list: a consumer that blocks after it was pushed returns at once."""
    broker = create_broker(wake_settings)
    broker.declare_queue("wake_a")
    consumer = broker.consume("wake_a", prefetch=1, timeout=50)
    fetch = broker.do_fetch
    sent: list[dramatiq.Message[Any]] = []

    def fetch_then_enqueue(*args: Any) -> Any:
        found = fetch(*args)
        if not sent:
            sent.append(broker.enqueue(message()))  # after the (empty) fetch, before the consumer blocks
        return found

    broker.do_fetch = fetch_then_enqueue  # type: ignore[attr-defined]
    try:
        started = time.monotonic()
        assert next(consumer) is None
        got = next(consumer)
        assert time.monotonic() - started < WELL_BEFORE_S
        assert got is not None and got.message_id == sent[0].message_id
    finally:
        broker.close()


def test_delayed_messages_and_retries_come_due_on_time(wake_settings) -> None:
    """The delay queue's consumer holds them in memory and must hand them over at their eta, not at the
    fallback: a 1 s delay, and a failure retried after its backoff of at most 200 ms."""
    seen = Seen()
    with running(wake_settings, seen) as broker:
        sent_at = time.monotonic()
        delayed = broker.enqueue(message(), delay=1000)
        failing = broker.enqueue(message("wake_a", "fail"))
        assert sent_at + 0.99 <= seen.wait(delayed.message_id)[0] < sent_at + 1.0 + WELL_BEFORE_S
        first, retried = seen.wait(failing.message_id, count=2)
        assert 0.1 <= retried - first < 0.2 + WELL_BEFORE_S  # Dramatiq jitters it to 50-100 %


def test_a_token_for_one_queue_does_not_leave_another_queue_asleep(wake_settings) -> None:
    seen = Seen()
    with running(wake_settings, seen, queues=("wake_a", "wake_b")) as broker:
        sent_at = time.monotonic()
        on_b = broker.enqueue(message("wake_b"))
        on_a = broker.enqueue(message("wake_a"))
        assert seen.wait(on_b.message_id)[0] - sent_at < WELL_BEFORE_S
        assert seen.wait(on_a.message_id)[0] - sent_at < WELL_BEFORE_S


def test_every_idle_worker_of_a_queue_gets_work(wake_settings) -> None:
    """Two workers (two brokers, as two processes are), one thread and one prefetched message each: while
    the first holds its message, the second must be woken for the next one."""
    seen, hold = Seen(), threading.Event()
    with running(wake_settings, seen, hold=hold) as broker, running(wake_settings, seen, hold=hold):
        sent_at = time.monotonic()
        sent = [broker.enqueue(message()) for _ in range(2)]
        try:
            for one in sent:
                assert seen.wait(one.message_id)[0] - sent_at < WELL_BEFORE_S
        finally:
            hold.set()


def test_tokens_are_bounded(wake_settings) -> None:
    broker = create_broker(wake_settings)
    try:
        for _ in range(100):
            broker.enqueue(message())
        assert 1 <= broker.client.llen(wake_key(broker.namespace, "wake_a")) <= 64
    finally:
        broker.close()


def test_a_wait_longer_than_redis_pys_socket_timeout_is_not_a_redis_failure(wake_settings) -> None:
    """redis-py times a read out after 5 s by default: a 10 s wait on the broker's own connections failed
    there with a TimeoutError (an "unexpected error" that restarted the consumer after 3 s blind)."""
    broker = create_broker(wake_settings)
    broker.declare_queue("wake_a")
    consumer = broker.consume("wake_a", prefetch=1, timeout=50)
    try:
        started = time.monotonic()
        assert next(consumer) is None
        assert time.monotonic() - started >= FALLBACK_MS / 1000 * 0.9
    finally:
        broker.close()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, durable redis-server: what it acknowledged survives a SIGKILL and a restart."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(data_dir=tmp_path / "redis", durable=True)
    server.start()
    yield server
    server.close()


def test_a_waking_worker_recovers_promptly_from_a_redis_restart(
    wake_settings, restartable_redis: RedisServer
) -> None:
    """Redis is SIGKILLed while the worker holds a message and another waits in the queue, and started
    again: a message enqueued after the restart is handled within ``recovery_s``, well under the heartbeat
    timeout (after which maintenance would requeue a dead worker's messages anyway), and none is lost."""
    recovery_s = 6.0  # Dramatiq restarts a failed consumer after 3 s, then it fetches at once; slack
    assert recovery_s < HEARTBEAT_TIMEOUT_MS / 1000 / 2
    settings = msgspec.structs.replace(
        wake_settings, redis_url=restartable_redis.url, worker_wake_fallback_ms=1000
    )
    seen, hold = Seen(), threading.Event()
    with running(settings, seen, hold=hold, threads=2) as broker:
        in_hand = broker.enqueue(message())
        seen.wait(in_hand.message_id, timeout=10)
        queued = broker.enqueue(message())  # prefetch 1 per thread: it waits in Redis or in the worker
        restartable_redis.kill()
        restartable_redis.start()
        restarted_at = time.monotonic()
        after = broker.enqueue(message())
        hold.set()
        assert seen.wait(after.message_id, timeout=30)[0] - restarted_at < recovery_s
        for one in (in_hand, queued):
            seen.wait(one.message_id, timeout=30)


@pytest.mark.parametrize("fallback_ms", [FALLBACK_MS, 0], ids=["waking", "polling"])
def test_the_consumers_poll_at_the_brokers_interval_not_at_the_worker_threads_wake_up(
    wake_settings: Settings, fallback_ms: int
) -> None:
    """``signup worker`` wakes its idle threads every second but polls every 50 ms: Dramatiq hands the same
    ``worker_timeout`` to both, through ``broker.consume(..., timeout=worker_timeout)``. If that seam moved,
    delayed messages and retries would come due up to a second late."""
    settings = msgspec.structs.replace(wake_settings, worker_wake_fallback_ms=fallback_ms)
    broker = create_broker(settings, poll_ms=50)
    broker.middleware = [m for m in broker.middleware if not isinstance(m, AsyncIO)]  # as in ``running``
    dramatiq.Actor(
        lambda: None, broker=broker, actor_name="record_wake_a", queue_name="wake_a", priority=0, options={}
    )
    worker = Worker(broker, worker_timeout=1000, worker_threads=1)
    worker.start()
    try:
        threads = list(worker.consumers.values())
        assert {thread.worker_timeout for thread in threads} == {1000}

        def started() -> list[Any]:
            consumers = [getattr(thread, "consumer", None) for thread in threads]
            return [] if None in consumers else consumers

        consumers = wait_until(started, timeout=10, what="the consumers")
        assert len(consumers) == 2  # the queue and its delay queue
        for consumer in consumers:
            assert consumer.timeout == (0 if fallback_ms else 50)  # a waking consumer never sleeps in it
            if fallback_ms:
                assert consumer.poll_s == 0.05
    finally:
        worker.stop()
        broker.close()
