"""The broker (``shared.broker``, Dramatiq's public interface on Redis Streams) on a real Redis.

Workers here block up to ``BLOCK_MS`` in an idle read, so work handled "well before" the end of that block
(under half of it) can only have been announced by the enqueue itself: the assertions compare against the
block, not against a tight timing.
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
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import AsyncIO, CurrentMessage

from services.relay.publisher import enqueue_batch
from services.relay.store import OutboxRow
from shared.broker import CLAIM_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS, StreamsBroker, create_broker
from shared.settings import Settings
from tests.support import RedisServer, wait_until

BLOCK_MS = 5_000
WELL_BEFORE_S = BLOCK_MS / 1000 / 2
DAY_MS = 24 * 3600 * 1000


class Seen:
    """When each message (by message id) reached an actor, in ``time.monotonic()`` seconds."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def add(self, message_id: str) -> None:
        with self.lock:
            self.at.setdefault(message_id, []).append(time.monotonic())

    def wait(self, message_id: str, *, count: int = 1, timeout: float = BLOCK_MS / 1000 * 2) -> list[float]:
        def arrived() -> list[float]:
            with self.lock:
                times = list(self.at.get(message_id, []))
            return times if len(times) >= count else []

        return wait_until(arrived, timeout=timeout, what=f"message {message_id}")


@pytest.fixture
def broker_settings(settings: Settings, db: object) -> Settings:
    return msgspec.structs.replace(settings, worker_min_backoff_ms=200, worker_max_backoff_ms=200)


def blocked_clients(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return int(client.info("clients")["blocked_clients"])
    finally:
        client.close()


def recording_broker(settings: Settings, seen: Seen, queues: tuple[str, ...], hold: threading.Event | None):
    """A broker whose actor on each queue records the message; it fails a message whose first argument is
    "fail" once, and blocks on ``hold`` when one is given."""
    broker = create_broker(settings)
    # Plain-function actors: without the AsyncIO middleware, two workers in this one process do not share
    # Dramatiq's one global event-loop thread (the first's would outlive the second's shutdown).
    broker.middleware = [m for m in broker.middleware if not isinstance(m, AsyncIO)]
    for queue in queues:

        def record(*args: Any) -> None:
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
    return broker


@contextmanager
def running(
    settings: Settings,
    seen: Seen,
    *,
    queues: tuple[str, ...] = ("wake_a",),
    hold: threading.Event | None = None,
    threads: int = 1,
) -> Iterator[StreamsBroker]:
    """A worker (``threads`` threads, prefetch 1) on ``recording_broker``. Yields once every consumer (one
    per queue, one per delay queue) is blocked in its read."""
    broker = recording_broker(settings, seen, queues, hold)
    before = blocked_clients(settings)
    worker = Worker(broker, worker_timeout=BLOCK_MS, worker_threads=threads)
    worker.queue_prefetch = 1
    worker.start()
    try:
        wait_until(
            lambda: blocked_clients(settings) >= before + 2 * len(queues), timeout=10, what="idle consumers"
        )
        yield broker
    finally:
        worker.stop(timeout=BLOCK_MS * 2)
        broker.close()


def message(queue: str = "wake_a", *args: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=queue, actor_name=f"record_{queue}", args=args, kwargs={}, options={})


def next_message(consumer: Any, *, timeout: float = 5.0) -> Any:
    """The consumer's next message; fails if none comes within ``timeout`` seconds."""
    return wait_until(lambda: next(consumer), timeout=timeout, what="a message")


@contextmanager
def consuming(settings: Settings, *, prefetch: int = 1, timeout: int = 100) -> Iterator[tuple[Any, Any]]:
    """A broker and a consumer of ``wake_a`` on it, both closed at the end."""
    broker = create_broker(settings)
    consumer = broker.consume("wake_a", prefetch=prefetch, timeout=timeout)
    try:
        yield broker, consumer
    finally:
        consumer.close()
        broker.close()


# Delivery and waking.


def test_an_enqueue_wakes_an_idle_consumer_well_before_its_read_ends(broker_settings) -> None:
    seen = Seen()
    with running(broker_settings, seen) as broker:
        sent_at = time.monotonic()
        sent = broker.enqueue(message())
        assert seen.wait(sent.message_id)[0] - sent_at < WELL_BEFORE_S


def test_the_relays_batch_wakes_an_idle_consumer(broker_settings) -> None:
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
    with running(broker_settings, seen) as broker:
        sent_at = time.monotonic()
        enqueue_batch(broker, [row])
        assert seen.wait(str(row.event_id))[0] - sent_at < WELL_BEFORE_S


def test_an_acknowledged_message_leaves_nothing_behind(broker_settings) -> None:
    with consuming(broker_settings, prefetch=1) as (broker, consumer):
        sent = broker.enqueue(message())
        got = next_message(consumer)
        assert got.message_id == sent.message_id and broker.held("wake_a") == 1
        assert broker.locate([sent.message_id]) == [True]
        consumer.ack(got)
        assert broker.waiting("wake_a") == 0 and broker.held("wake_a") == 0
        assert broker.client.hlen(broker.locators_key) == 0


def test_delayed_messages_and_retries_come_due_on_time(broker_settings) -> None:
    """The delay queue's consumer holds them in memory and must hand them over at their eta, not when its
    read ends: a 1 s delay, and a failure retried after its backoff of at most 200 ms."""
    seen = Seen()
    with running(broker_settings, seen) as broker:
        sent_at = time.monotonic()
        delayed = broker.enqueue(message(), delay=1000)
        failing = broker.enqueue(message("wake_a", "fail"))
        assert sent_at + 0.99 <= seen.wait(delayed.message_id)[0] < sent_at + 1.0 + WELL_BEFORE_S
        first, retried = seen.wait(failing.message_id, count=2)
        assert 0.1 <= retried - first < 0.2 + WELL_BEFORE_S  # Dramatiq jitters it to 50-100 %


def test_one_queues_message_does_not_leave_another_queue_asleep(broker_settings) -> None:
    seen = Seen()
    with running(broker_settings, seen, queues=("wake_a", "wake_b")) as broker:
        sent_at = time.monotonic()
        on_b = broker.enqueue(message("wake_b"))
        on_a = broker.enqueue(message("wake_a"))
        assert seen.wait(on_b.message_id)[0] - sent_at < WELL_BEFORE_S
        assert seen.wait(on_a.message_id)[0] - sent_at < WELL_BEFORE_S


def test_every_idle_worker_of_a_queue_gets_work(broker_settings) -> None:
    """Two workers (two brokers, as two processes are), one thread and one prefetched message each: while
    the first holds its message, the second must be woken for the next one."""
    seen, hold = Seen(), threading.Event()
    with running(broker_settings, seen, hold=hold) as broker, running(broker_settings, seen, hold=hold):
        sent_at = time.monotonic()
        sent = [broker.enqueue(message()) for _ in range(2)]
        try:
            for one in sent:
                assert seen.wait(one.message_id)[0] - sent_at < WELL_BEFORE_S
        finally:
            hold.set()


def test_an_idle_read_ends_in_time_for_the_next_heartbeat(broker_settings) -> None:
    """A worker may give its consumers any timeout; a read longer than the heartbeat timeout would make
    the process look dead to the others, which would hand its messages back while it handles them."""
    broker = create_broker(broker_settings)
    consumer = broker.consume("wake_a", prefetch=1, timeout=60_000)
    try:
        read = threading.Thread(target=next, args=(consumer,), daemon=True)
        read.start()
        read.join(HEARTBEAT_TIMEOUT_MS / 1000 / 2)
        assert not read.is_alive()
    finally:
        consumer.close()
        broker.close()


# Stops, dead processes, restarts.


def test_a_stopping_worker_ends_its_consumers_blocked_reads_at_once(broker_settings) -> None:
    """Dramatiq's Worker.stop waits for each consumer thread to notice; a read blocked for a minute must
    end when the stop begins, not when the minute is over."""
    broker = create_broker(broker_settings)
    consumer = broker.consume("wake_a", prefetch=1, timeout=60_000)
    returned = threading.Event()

    def read() -> None:
        next(consumer)
        returned.set()

    reader = threading.Thread(target=read, daemon=True)
    before = blocked_clients(broker_settings)
    reader.start()
    try:
        wait_until(lambda: blocked_clients(broker_settings) > before, timeout=10, what="the blocked read")
        broker.emit_before("worker_shutdown", None)
        wait_until(returned.is_set, timeout=10, what="the read to end")
    finally:
        consumer.close()
        broker.close()


def test_a_stopped_consumers_messages_go_back_at_once(broker_settings) -> None:
    broker, other = create_broker(broker_settings), create_broker(broker_settings)
    stopping = broker.consume("wake_a", prefetch=2, timeout=100)
    taking = other.consume("wake_a", prefetch=2, timeout=100)
    try:
        sent = [broker.enqueue(message()).message_id for _ in range(2)]
        assert {next_message(stopping).message_id, next_message(stopping).message_id} == set(sent)
        stopping.close()  # as Worker.stop does, without acknowledging either
        assert {next_message(taking).message_id, next_message(taking).message_id} == set(sent)
        assert broker.locate(sent) == [True, True]
    finally:
        taking.close()
        broker.close()
        other.close()


def test_a_dead_processs_messages_are_handed_to_a_live_one(broker_settings) -> None:
    """A process that stopped beating (SIGKILLed) without handing back: once its heartbeat is older than
    ``HEARTBEAT_TIMEOUT_MS``, the next look for dead consumers (every ``CLAIM_INTERVAL_MS``) takes its
    messages back."""
    dead, live = create_broker(broker_settings), create_broker(broker_settings)
    dying = dead.consume("wake_a", prefetch=1, timeout=100)
    taking = live.consume("wake_a", prefetch=1, timeout=100)
    try:
        sent = dead.enqueue(message())
        assert next_message(dying).message_id == sent.message_id
        assert next(taking) is None  # it is held by the other process
        stale = time.time() * 1000 - HEARTBEAT_TIMEOUT_MS - 1
        dead.client.zadd(dead.heartbeats_key, {dead.broker_id: stale})  # as if it died then
        dead.last_beat_ms = 2**62  # and never beats again
        got = next_message(taking, timeout=(CLAIM_INTERVAL_MS + 2000) / 1000)
        assert got.message_id == sent.message_id
        assert dead.broker_id not in {
            c["name"].decode() for c in live.client.xinfo_consumers(live.stream_key("wake_a"), "workers")
        }
    finally:
        taking.close()
        live.close()
        dead.client.close()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, durable redis-server: what it acknowledged survives a SIGKILL and a restart."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(data_dir=tmp_path / "redis", durable=True)
    server.start()
    yield server
    server.close()


def test_a_worker_recovers_promptly_from_a_redis_restart(
    broker_settings, restartable_redis: RedisServer
) -> None:
    """Redis is SIGKILLed while the worker holds a message and another waits, and started again: a message
    enqueued after the restart is handled within ``recovery_s``, well under the heartbeat timeout, and none
    is lost."""
    recovery_s = 6.0  # Dramatiq restarts a failed consumer after 3 s, then it reads at once; slack
    assert recovery_s < HEARTBEAT_TIMEOUT_MS / 1000
    settings = msgspec.structs.replace(broker_settings, redis_url=restartable_redis.url)
    seen, hold = Seen(), threading.Event()
    with running(settings, seen, hold=hold, threads=2) as broker:
        in_hand = broker.enqueue(message())
        seen.wait(in_hand.message_id, timeout=10)
        queued = broker.enqueue(message())
        restartable_redis.kill()
        restartable_redis.start()
        restarted_at = time.monotonic()
        after = broker.enqueue(message())
        hold.set()
        assert seen.wait(after.message_id, timeout=30)[0] - restarted_at < recovery_s
        for one in (in_hand, queued):
            seen.wait(one.message_id, timeout=30)


def test_a_consumer_after_a_connection_failure_reads_again_what_its_process_held(
    broker_settings, restartable_redis: RedisServer
) -> None:
    """Dramatiq drops a failed consumer and the messages it held in memory (its delay queue's); Redis still
    lists them as delivered to this live process, so the next consumer must read them again."""
    settings = msgspec.structs.replace(broker_settings, redis_url=restartable_redis.url)
    broker = create_broker(settings)
    failed = broker.consume("wake_a", prefetch=2, timeout=100)  # room left: it reads Redis again
    try:
        sent = broker.enqueue(message())
        assert next_message(failed).message_id == sent.message_id
        restartable_redis.kill()
        with pytest.raises(ConnectionClosed):
            next(failed)
        restartable_redis.start()
        again = broker.consume("wake_a", prefetch=1, timeout=100)
        assert next_message(again).message_id == sent.message_id
        again.close()
    finally:
        broker.close()


class DiesAtHandOver(dramatiq.Middleware):
    """Kills Redis just as the delay queue's consumer hands a message that came due to its queue: the
    moment a 10,000-signup soak met by chance (a SIGKILL of Redis at the eta of a retry's backoff), made
    certain here through Dramatiq's public ``before_enqueue`` hook. The enqueue then fails on a real dead
    Redis."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.redis_server = redis_server
        self.killed = threading.Event()

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        if not self.killed.is_set() and "eta" not in message.options and message.args == ("due",):
            self.redis_server.kill()
            self.killed.set()


def test_a_delayed_message_whose_hand_over_met_redis_down_still_comes(
    broker_settings, restartable_redis: RedisServer
) -> None:
    """Dramatiq's consumer thread takes a due message out of its memory, fails to enqueue it, drops its
    consumer and starts another 3 s later; the failed one could not hand the message back (Redis was down),
    and this process, alive, keeps beating, so no one else takes it over either. The next consumer must
    read it again: before, it stayed delivered-and-pending until the worker stopped."""
    settings = msgspec.structs.replace(broker_settings, redis_url=restartable_redis.url)
    seen = Seen()
    with running(settings, seen) as broker:
        dies = DiesAtHandOver(restartable_redis)
        broker.add_middleware(dies)
        delayed = broker.enqueue(message("wake_a", "due"), delay=500)
        wait_until(dies.killed.is_set, timeout=10, what="the hand-over, and Redis killed")
        restartable_redis.start()
        assert seen.wait(delayed.message_id, timeout=30)


def test_a_consumer_recreates_its_group_after_redis_lost_its_data(broker_settings) -> None:
    broker = create_broker(broker_settings)
    consumer = broker.consume("wake_a", prefetch=1, timeout=100)
    try:
        next(consumer)  # the group exists
        broker.client.flushall()
        sent = broker.enqueue(message())
        assert next_message(consumer).message_id == sent.message_id
    finally:
        consumer.close()
        broker.close()


def test_an_enqueue_while_redis_is_down_is_redis_pys_error(
    broker_settings, redis_server: RedisServer
) -> None:
    broker = create_broker(broker_settings)
    redis_server.stop()
    try:
        with pytest.raises(redis.ConnectionError):
            broker.enqueue(message())
        with pytest.raises(ConnectionClosed):
            broker.consume("wake_a", prefetch=1, timeout=100)
    finally:
        redis_server.start()
        broker.close()


# Where a message is, and dead letters.


def test_locate_finds_waiting_held_delayed_and_dead_messages_and_nothing_else(broker_settings) -> None:
    with consuming(broker_settings, prefetch=2) as (broker, consumer):
        held = broker.enqueue(message()).message_id
        next_message(consumer)
        dead = broker.enqueue(message()).message_id
        consumer.nack(next_message(consumer))
        waiting = broker.enqueue(message()).message_id
        delayed = broker.enqueue(message(), delay=60_000).message_id
        assert broker.locate([held, dead, waiting, delayed, str(uuid.uuid4())]) == [True] * 4 + [False]
        broker.client.delete(broker.stream_key("wake_a"))  # the stream goes, its locators stay
        assert broker.locate([held, dead, waiting, delayed]) == [False, True, False, True]
        broker.client.flushall()
        assert broker.locate([dead, delayed]) == [False, False]


def test_dead_letters_stay_past_a_week_until_replayed_or_purged_by_retention(broker_settings) -> None:
    """Nothing expires a dead letter but the retention the relay applies (``DEAD_LETTER_RETENTION_HOURS``)."""
    with consuming(broker_settings, prefetch=2) as (broker, consumer):
        sent = [broker.enqueue(message()).message_id for _ in range(2)]
        for _ in sent:
            got = next_message(consumer)
            got.options["last_error"] = "SMTP 550"
            consumer.nack(got)
        now = int(time.time() * 1000)
        retention = broker_settings.dead_letter_retention_hours * 3_600_000
        assert retention > 7 * DAY_MS
        assert broker.purge_dead_letters(older_than_ms=retention, now_ms=now + 8 * DAY_MS) == 0
        letters = broker.dead_letters()
        assert [letter.message.message_id for letter in letters] == sent
        assert {(letter.error, letter.queue) for letter in letters} == {("SMTP 550", "wake_a")}
        replayed = broker.replay(letters[0])
        assert replayed is not None
        assert replayed.message_id == sent[0] and "last_error" not in replayed.options
        assert next_message(consumer).message_id == sent[0]
        assert broker.purge_dead_letters(older_than_ms=retention, now_ms=now + retention + 1000) == 1
        assert broker.dead_letters() == []
        assert broker.locate([sent[1]]) == [False] and not broker.client.hexists(broker.locators_key, sent[1])
