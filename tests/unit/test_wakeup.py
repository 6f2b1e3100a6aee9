"""The wake-up seams with small fakes, and the Dramatiq internals they were written against (2.2.1).

If a test of the second half fails, Dramatiq changed under ``shared.wakeup``, ``shared.broker`` or
``services.relay.publisher``: read the new code before updating a pinned hash.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers import redis as dramatiq_redis
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.worker import ConsumerThread, Worker

from shared.broker import SignupRedisBroker
from shared.wakeup import WAKE_TOKENS_MAX, StopWaking, WakingConsumer, push_wake, stop_key, wake_key


class FakePipe:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def rpush(self, key: str, *values: bytes) -> None:
        self.commands.append(("rpush", key, len(values)))

    def ltrim(self, key: str, start: int, end: int) -> None:
        self.commands.append(("ltrim", key, start, end))


class FakeClient:
    def __init__(self) -> None:
        self.blpops: list[tuple[list[str], float]] = []

    def blpop(self, keys: list[str], timeout: float) -> None:
        self.blpops.append((keys, timeout))


class FakeBroker:
    namespace = "ns"
    broker_id = "b1"
    wake_fallback_ms = 1000

    def __init__(self, fetched: list[list[bytes]]) -> None:
        self.client = self.wait_client = FakeClient()
        self.fetched = fetched
        self.stopping = threading.Event()

    def do_fetch(self, queue_name: str, count: int) -> list[bytes]:
        return self.fetched.pop(0) if self.fetched else []

    def do_ack(self, queue_name: str, redis_message_id: str) -> None:
        pass


def encoded(**options: Any) -> bytes:
    options = {"redis_message_id": f"r{len(options)}-{time.monotonic_ns()}", **options}
    return dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options=options).encode()


def test_tokens_follow_the_messages_and_are_capped() -> None:
    pipe = FakePipe()
    push_wake(pipe, namespace="ns", queue_name="q.DQ", count=500)
    assert pipe.commands == [
        ("rpush", "ns:__wake__.q.DQ", WAKE_TOKENS_MAX),
        ("ltrim", "ns:__wake__.q.DQ", -WAKE_TOKENS_MAX, -1),
    ]


def test_an_idle_consumer_with_room_blocks_on_its_queue_and_its_brokers_stop_list() -> None:
    broker = FakeBroker([])
    consumer = WakingConsumer(broker, "q", 2, 50)
    assert next(consumer) is None
    assert broker.client.blpops == [([wake_key("ns", "q"), stop_key("ns", "b1")], 1.0)]


def test_a_full_consumer_waits_for_an_ack_not_for_redis() -> None:
    broker = FakeBroker([[encoded()]])
    consumer = WakingConsumer(broker, "q", 1, 50)
    held = next(consumer)
    assert held is not None
    threading.Timer(0.05, consumer.ack, (held,)).start()
    started = time.monotonic()
    assert next(consumer) is None
    assert time.monotonic() - started < 0.9  # woken by the ack, not by the 1 s fallback
    assert broker.client.blpops == []


def test_an_ack_after_dramatiq_found_the_consumer_full_does_not_send_it_to_sleep_on_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Dramatiq decides not to fetch (full), then a worker thread acks before the consumer waits: the
    # consumer must fetch again at once, not block on the wake-up list with its queue full of work.
    broker = FakeBroker([[encoded()], [encoded()]])
    consumer = WakingConsumer(broker, "q", 1, 50)
    held = next(consumer)
    assert held is not None

    def ack_during_backoff(misses: int, *, max_backoff: int) -> tuple[int, int]:
        consumer.ack(held)
        return compute_backoff(misses, max_backoff=max_backoff)

    monkeypatch.setattr(dramatiq_redis, "compute_backoff", ack_during_backoff)
    started = time.monotonic()
    assert next(consumer) is None
    assert time.monotonic() - started < 0.5
    assert broker.client.blpops == []
    monkeypatch.undo()
    assert next(consumer) is not None  # the second message, fetched on the next call


def test_a_consumer_holding_a_delayed_message_polls_until_its_eta_instead_of_blocking() -> None:
    broker = FakeBroker([[encoded(eta=current_millis() + 60_000)]])
    consumer = WakingConsumer(broker, "q.DQ", 10, 50)
    assert next(consumer) is not None
    started = time.monotonic()
    assert next(consumer) is None
    assert 0.04 <= time.monotonic() - started < 0.9  # the 50 ms poll, as Dramatiq's consumer does
    assert broker.client.blpops == []


def test_a_due_delayed_message_ends_the_wait_at_once() -> None:
    broker = FakeBroker([[encoded(eta=current_millis() - 1)]])
    consumer = WakingConsumer(broker, "q.DQ", 10, 5000)
    assert next(consumer) is not None
    started = time.monotonic()
    assert next(consumer) is None
    assert time.monotonic() - started < 1.0


def test_a_stopping_worker_ends_the_waits_of_its_own_consumers_only() -> None:
    class Pipe(FakePipe):
        def expire(self, key: str, seconds: int) -> None:
            self.commands.append(("expire", key, seconds))

        def execute(self) -> None:
            pass

        def __enter__(self) -> Pipe:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    pipe, broker = Pipe(), FakeBroker([])
    broker.client.pipeline = lambda transaction: pipe  # type: ignore[attr-defined]
    worker = type("W", (), {"consumers": {"q": 1, "q.DQ": 2}})()
    StopWaking().before_worker_shutdown(broker, worker)  # type: ignore[arg-type]
    assert broker.stopping.is_set()
    assert pipe.commands == [("rpush", stop_key("ns", "b1"), 2), ("expire", stop_key("ns", "b1"), 60)]
    assert next(WakingConsumer(broker, "q", 2, 50)) is None
    assert broker.client.blpops == []


def test_a_redis_timeout_is_a_connection_failure_in_the_wait_and_the_ack() -> None:
    def timed_out(*args: Any, **kwargs: Any) -> None:
        raise redis.TimeoutError("Timeout reading from socket")

    broker = FakeBroker([[encoded()]])
    consumer = WakingConsumer(broker, "q", 2, 50)
    message = next(consumer)
    assert message is not None
    broker.do_ack = timed_out  # type: ignore[method-assign]
    with pytest.raises(ConnectionClosed):
        consumer.ack(message)
    broker.wait_client.blpop = timed_out  # type: ignore[method-assign]
    with pytest.raises(ConnectionClosed):
        next(consumer)


# --- What the code above relies on in Dramatiq 2.2.1 -------------------------------------------------------

PINNED_SOURCES = {
    # WakingConsumer delegates to it with timeout 0 and relies on: cache first, fetch only with room, None
    # after compute_backoff's sleep when the fetch found nothing, ConnectionClosed for redis errors.
    dramatiq_redis._RedisConsumer.__next__: "b8245bc4ab8044d6",
    dramatiq_redis._RedisConsumer.__init__: "c626986d71660eb6",
    dramatiq_redis._RedisConsumer.ack: "a44cb9ea8b6c3f92",
    dramatiq_redis._RedisConsumer.nack: "573d58e9c2a0765e",
    dramatiq_redis._RedisConsumer.requeue: "4d8aac265b34222e",
    # do_enqueue is what enqueue calls to store a message; consume builds consumer_class(broker, q, p, t).
    dramatiq_redis.RedisBroker.enqueue: "e1590deaae2f786a",
    dramatiq_redis.RedisBroker.consume: "1b12ab3db95da1ec",
    dramatiq_redis.RedisBroker._dispatch: "ee77793d07f17bbe",
    # After every __next__ the consumer thread hands over due delayed messages (broker.enqueue, then ack);
    # Worker.stop emits worker_shutdown before it waits for the consumer threads.
    ConsumerThread.run: "6003fa99242662db",
    ConsumerThread.handle_delayed_messages: "357b6b23675bc029",
    # A worker thread's ack that raises a BrokerConnectionError is retried until Redis answers; any other
    # error is only logged (and the message stays held): hence every Redis failure is a ConnectionClosed.
    ConsumerThread.post_process_message: "34d4806bcc9eca81",
    Worker.stop: "b07f970155fef59e",
}
DISPATCH_LUA_SHA256 = "ba4d872e4fb204ebc3f73ca4719265a9946d70e847856c125314f01a8c90540c"


def test_the_dramatiq_version_is_the_one_this_was_written_for() -> None:
    assert dramatiq.__version__ == "2.2.1"


@pytest.mark.parametrize("function", PINNED_SOURCES, ids=lambda f: f.__qualname__)
def test_the_dramatiq_code_relied_on_is_unchanged(function: Any) -> None:
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == PINNED_SOURCES[function], f"{function.__qualname__} changed: review shared/wakeup.py"


def test_the_dispatch_script_and_its_argument_order_are_unchanged() -> None:
    script = Path(dramatiq_redis.__file__).with_name("redis") / "dispatch.lua"
    text = script.read_text()
    assert hashlib.sha256(script.read_bytes()).hexdigest() == DISPATCH_LUA_SHA256
    order = ["command", "timestamp", "queue_name", "worker_id", "heartbeat_timeout", "dead_message_ttl"]
    order += ["do_maintenance", "max_unpack_size"]
    for n, name in enumerate(order, start=1):
        assert f"local {name} = ARGV[{n}]" in text
    assert "local message_id = ARGS[1]\n    local message_data = ARGS[2]" in text
    assert 'local queue_full_name = namespace .. ":" .. queue_name' in text
    broker = SignupRedisBroker.__new__(SignupRedisBroker)
    broker.broker_id, broker.heartbeat_timeout, broker.dead_message_ttl = "b1", 15000, 7
    broker.maintenance_chance = 0
    broker._max_unpack_size = lambda: 3  # type: ignore[method-assign]
    args = broker.enqueue_args("q", "r1", b"data")
    assert args[0] == "enqueue" and args[2:] == ["q", "b1", 15000, 7, 0, 3, "r1", b"data"]


def test_a_zero_timeout_makes_dramatiqs_backoff_zero() -> None:
    for attempts in range(40):
        assert compute_backoff(attempts, max_backoff=0)[1] == 0
