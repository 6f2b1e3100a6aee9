"""The Dramatiq broker every process shares (relay and course strategies enqueue; the worker consumes).

``create_broker(settings)`` builds it; nothing here runs at import time. The worker declares its actor on
it explicitly (``services.worker.app.build_worker``), so Dramatiq's global broker is never needed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import msgspec
import redis
from dramatiq import Message
from dramatiq.broker import Consumer
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from dramatiq.encoder import Encoder, MessageData
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from shared.locator import locator, locators_key
from shared.settings import Settings
from shared.wakeup import (
    REDIS_DOWN,
    WAIT_MARGIN_S,
    WAKE_FALLBACK_MS,
    PollingConsumer,
    StopWaking,
    WakingConsumer,
    push_wake,
)

# Dramatiq requeues a dead worker's unacked messages once its heartbeat is older than this and a
# maintenance pass runs. The chance is per million broker commands: the default (1000, one pass per 1000
# polls) can take many minutes; 100_000 is a pass every ~10 polls of a consumer polling every 50 ms. (It was
# 50, i.e. rarer than the default: the soak lost every message a killed worker held.) An idle waking consumer
# fetches once per wake fallback (1 s) instead of ~27 times a second, so there every command runs the pass
# (two ZRANGEBYSCOREs inside the script when no worker is dead): a killed worker's message is redelivered
# about a second after its heartbeat expires, as before.
HEARTBEAT_TIMEOUT_MS = 15_000
MAINTENANCE_CHANCE_POLLING = 100_000
MAINTENANCE_CHANCE_WAKING = 1_000_000

# A message older than this is dropped by AgeLimit; ours must never be, so the limit is a week.
MAX_AGE_MS = 7 * 24 * 3600 * 1000


class MsgspecJSONEncoder(Encoder):
    """Dramatiq's JSON message format, written and read by msgspec instead of the ``json`` module.

    The bytes are JSON that Dramatiq's own ``JSONEncoder`` reads, and it reads theirs (non-ASCII is written
    as UTF-8 rather than ``\\u`` escapes). The relay encodes one message per outbox row, and ``json.dumps``
    was a fifth of its time per row in a backlog drain.
    """

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()

    def encode(self, data: MessageData) -> bytes:
        return self._encoder.encode(data)

    def decode(self, data: bytes) -> MessageData:
        decoded: MessageData = msgspec.json.decode(data)  # Message.decode turns its errors into DecodeError
        return decoded


class SignupRedisBroker(RedisBroker):
    """A ``RedisBroker`` that loses no message when Redis restarts under a live worker.

    When its connection fails, Dramatiq's consumer drops the messages it holds in memory (prefetched, or
    retries waiting out their backoff) while Redis still lists them as held by this broker; maintenance
    only requeues what *dead* brokers held, so they waited for the worker to die. Each consumer start
    therefore first puts back what this broker still holds on its queue. A message that a worker thread is
    processing at that moment is then delivered twice, which the worker's idempotency absorbs (its
    verify_emails row is locked FOR UPDATE and sent_at is checked), and Dramatiq's requeue skips messages
    already acknowledged.

    Its consumers wait up to ``wake_fallback_ms`` for a wake-up token instead of polling (``shared.wakeup``;
    0 polls as Dramatiq does): every enqueue pushes one. They poll every ``poll_ms`` where they poll (while
    holding delayed messages, or idle with ``wake_fallback_ms`` 0); None leaves that to the worker's timeout,
    as in Dramatiq, where the same number is also how often each idle worker thread wakes up.
    """

    def __init__(
        self, *, wake_fallback_ms: int = WAKE_FALLBACK_MS, poll_ms: int | None = None, **options: Any
    ) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]
        self.wake_fallback_ms = wake_fallback_ms
        self.poll_ms = poll_ms
        self.wait_client = self.client
        """What consumers block on (``BLPOP``): with a URL, a pool whose socket timeout outlasts the wait."""
        if wake_fallback_ms and options.get("url"):
            self.wait_client = redis.Redis.from_url(
                options["url"], socket_timeout=wake_fallback_ms / 1000 + WAIT_MARGIN_S
            )
        self.stopping = threading.Event()
        """Set when a worker on this broker starts to stop (``StopWaking``)."""
        self.add_middleware(StopWaking())

    @property
    def consumer_class(self) -> type[Consumer]:
        return WakingConsumer if self.wake_fallback_ms else PollingConsumer

    def enqueue_args(self, queue_name: str, redis_message_id: str, data: bytes) -> list[str | int | bytes]:
        """The arguments of Dramatiq's ``dispatch`` script for an enqueue, in the order dispatch.lua reads."""
        return [
            "enqueue",
            current_millis(),
            queue_name,
            self.broker_id,
            int(self.heartbeat_timeout),
            int(self.dead_message_ttl),
            self._should_do_maintenance("enqueue"),
            int(self._max_unpack_size()),  # type: ignore[no-untyped-call]
            redis_message_id,
            data,
        ]

    def do_enqueue(self, queue_name: str, redis_message_id: str, data: bytes) -> None:
        """What ``RedisBroker.enqueue`` calls to store a message: Dramatiq's script, the event's locator
        (``shared.locator``) and a wake-up token, in one MULTI/EXEC. Raises redis-py's errors."""
        args = self.enqueue_args(queue_name, redis_message_id, data)
        message_id = Message.decode(data).message_id

        def fill(pipe: Any) -> None:
            self.dispatch_in(pipe, args)
            pipe.hset(locators_key(self.namespace), message_id, locator(queue_name, redis_message_id))
            push_wake(pipe, namespace=self.namespace, queue_name=queue_name)

        self.transaction(fill)

    def dispatch_in(self, pipe: Any, args: list[str | int | bytes]) -> None:
        """Queue a call of Dramatiq's ``dispatch`` script on ``pipe`` by its SHA (run it in ``transaction``).

        Not through redis-py's ``Script``, which sends ``SCRIPT EXISTS`` before every pipeline that holds
        one: a round trip on the way from the commit to the inbox.
        """
        pipe.evalsha(self.scripts["dispatch"].sha, 1, self.namespace, *args)

    def store_in(self, pipe: Any, messages: list[tuple[str, str, bytes]]) -> None:
        """Queue on ``pipe`` what the ``dispatch`` script's enqueue (without maintenance) writes, for many
        ``(queue_name, redis_message_id, data)`` at once: this broker's heartbeat, then per queue one HSET of
        the data into ``<ns>:<queue>.msgs`` and one RPUSH of the ids onto ``<ns>:<queue>``, in order.

        The same keys and values as one script call per message (tests/integration/test_relay_publish.py
        compares them), with a few commands per batch: no Lua per message in Redis, and no command per
        message to build and parse here. Run it in ``transaction``.
        """
        data_by_queue: dict[str, dict[str, bytes]] = {}
        for queue_name, redis_message_id, data in messages:
            data_by_queue.setdefault(queue_name, {})[redis_message_id] = data
        pipe.zadd(f"{self.namespace}:__heartbeats__", {self.broker_id: current_millis()})
        for queue_name, queued in data_by_queue.items():
            key = f"{self.namespace}:{queue_name}"
            pipe.hset(f"{key}.msgs", mapping=queued)
            pipe.rpush(key, *queued)

    def transaction(self, fill: Callable[[Any], None]) -> None:
        """Run the commands ``fill(pipe)`` queues (``dispatch_in`` calls among them) in one MULTI/EXEC.

        If Redis no longer has the script (it restarted, or ``SCRIPT FLUSH``), that call fails while the
        rest of the transaction ran: the script is loaded and the same commands run once more, which writes
        the same locators and only adds wake-up tokens (a stale one costs one empty fetch). Raises redis-py's
        errors.
        """
        for attempt in (1, 2):
            with self.client.pipeline(transaction=True) as pipe:
                fill(pipe)
                try:
                    pipe.execute()
                    return
                except redis.exceptions.NoScriptError:
                    if attempt == 2:
                        raise
            self.client.script_load(self.scripts["dispatch"].script)  # same SHA: it is the script's SHA-1

    def close(self) -> None:
        super().close()
        if self.wait_client is not self.client:
            self.wait_client.close()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        self.hand_back(queue_name)
        consumer: Consumer = super().consume(queue_name, prefetch, self.poll_ms or timeout)
        return consumer

    def hand_back(self, queue_name: str) -> int:
        """Put every message this broker holds on ``queue_name`` (fetched, not yet acked) back on that queue.

        Returns how many it held. Raises ``ConnectionClosed`` when Redis cannot be reached.
        """
        try:
            held = self.client.smembers(f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}")
            if held:
                self.do_requeue(queue_name, *held)
        except REDIS_DOWN as exc:
            raise ConnectionClosed(exc) from None
        return len(held)

    def hand_back_all(self) -> int:
        """``hand_back`` on every declared queue and delay queue: what a stopping worker must not keep.

        Dramatiq's ``Worker.stop`` requeues the messages waiting in the worker's memory, but not those its
        consumer fetched and had not handed out yet, nor one a worker thread did not finish in time; without
        this they would wait for the heartbeat timeout. Raises ``ConnectionClosed`` when Redis is down.
        """
        queues = self.get_declared_queues() | self.get_declared_delay_queues()
        return sum(self.hand_back(queue_name) for queue_name in sorted(queues))


def create_broker(
    settings: Settings, *, extra_middleware: list[Middleware] | None = None, poll_ms: int | None = None
) -> SignupRedisBroker:
    """A ``SignupRedisBroker`` on ``REDIS_URL`` with retries configured from the ``WORKER_*`` settings, its
    consumers polling every ``poll_ms`` (``SignupRedisBroker``).

    Sets Dramatiq's process-wide message encoder to ``MsgspecJSONEncoder`` (the same JSON, faster).
    """
    dramatiq.set_encoder(MsgspecJSONEncoder())
    middleware: list[Middleware] = [
        AgeLimit(max_age=MAX_AGE_MS),
        TimeLimit(time_limit=5 * 60 * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(
            max_retries=settings.worker_max_retries,
            min_backoff=settings.worker_min_backoff_ms,
            max_backoff=settings.worker_max_backoff_ms,
        ),
        CurrentMessage(),
        AsyncIO(),
        *(extra_middleware or []),
    ]
    return SignupRedisBroker(
        url=settings.redis_url,
        middleware=middleware,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=(
            MAINTENANCE_CHANCE_WAKING if settings.worker_wake_fallback_ms else MAINTENANCE_CHANCE_POLLING
        ),
        wake_fallback_ms=settings.worker_wake_fallback_ms,
        poll_ms=poll_ms,
    )
