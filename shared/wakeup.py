"""Waking idle Dramatiq consumers when work arrives, instead of letting them poll Redis blind.

Every enqueue (``SignupRedisBroker.do_enqueue``, the relay's batch pipeline, a consumer's requeue) pushes a
token onto ``<ns>:__wake__.<queue>``, a Redis list of at most ``WAKE_TOKENS_MAX`` tokens, after the message
and in the same pipeline. A ``WakingConsumer`` that found its queue empty blocks on that list
(``BLPOP``) for up to ``WAKE_FALLBACK_MS`` instead of sleeping: the first token wakes it, and it fetches.

No wake-up is lost (docs/DESIGN.md §4 argues it): a consumer blocks only after a fetch found the queue empty
while it had room; a message pushed after that fetch is followed by its token, which stays in the list until
some blocked consumer of that queue pops it and then fetches; a stale token costs one empty fetch. Each queue
(and each delay queue) has its own list, so one queue's token never wakes another queue's consumer.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware

# The longest an idle consumer blocks: it then fetches anyway (what a token cannot announce, e.g. messages
# a dead worker held, put back by Dramatiq's maintenance), and that fetch refreshes its heartbeat.
WAKE_FALLBACK_MS = 1000
# How much longer than its own timeout a wait may take to answer before its connection counts as dead. The
# wait has a client of its own (``SignupRedisBroker.wait_client``) whose socket timeout is the fallback plus
# this: redis-py's default (5 s) would cut a longer wait off with a TimeoutError, and a shorter one would let
# a wait on a connection that no longer answers hang for 5 s instead of failing soon after its timeout.
WAIT_MARGIN_S = 1.0
# Tokens kept per queue: enough to wake every idle consumer of a queue at once, few enough that the stale
# ones a burst leaves behind cost a handful of empty fetches.
WAKE_TOKENS_MAX = 64


def wake_key(namespace: str, queue_name: str) -> str:
    """The wake-up list of ``queue_name`` (a delay queue ``x.DQ`` has its own)."""
    return f"{namespace}:__wake__.{queue_name}"


def stop_key(namespace: str, broker_id: str) -> str:
    """The list that ends the waits of one broker's (one process's) consumers when its worker stops."""
    return f"{namespace}:__stop__.{broker_id}"


def push_wake(pipe: Any, *, namespace: str, queue_name: str, count: int = 1) -> None:
    """Queue on ``pipe`` the tokens announcing ``count`` new messages on ``queue_name``; call it after the
    commands that push the messages, so that a woken consumer finds them."""
    key = wake_key(namespace, queue_name)
    pipe.rpush(key, *[b"1"] * max(1, min(count, WAKE_TOKENS_MAX)))
    pipe.ltrim(key, -WAKE_TOKENS_MAX, -1)


# What a consumer treats as "Redis is gone": redis-py raises TimeoutError (not a ConnectionError) when a
# connection stops answering within its socket timeout, and Dramatiq's consumer only converts ConnectionError.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class PollingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, polling every ``timeout`` ms when idle; requeues announce themselves.

    Every Redis failure it meets, a timeout included, is a ``ConnectionClosed``: Dramatiq's consumer thread
    then restarts the consumer (which hands back what it held), and its worker threads retry an ack until
    Redis answers. A redis-py TimeoutError took other paths: an "unexpected error" for the consumer, and in
    an ack an error Dramatiq only logs, leaving the message held by a live worker, which maintenance never
    requeues.
    """

    def __next__(self) -> MessageProxy | None:
        try:
            return super().__next__()  # type: ignore[no-any-return, no-untyped-call]
        except redis.TimeoutError as exc:
            raise ConnectionClosed(exc) from None

    def ack(self, message: MessageProxy) -> None:
        try:
            super().ack(message)  # type: ignore[no-untyped-call]
        except redis.TimeoutError as exc:
            raise ConnectionClosed(exc) from None

    def nack(self, message: MessageProxy) -> None:
        try:
            super().nack(message)  # type: ignore[no-untyped-call]
        except redis.TimeoutError as exc:
            raise ConnectionClosed(exc) from None

    def requeue(self, messages: Any) -> None:
        messages = list(messages)
        try:
            super().requeue(messages)  # type: ignore[no-untyped-call]
            if messages:  # back on the queue: another consumer (another process) must hear of them
                with self.broker.client.pipeline(transaction=False) as pipe:
                    push_wake(
                        pipe, namespace=self.broker.namespace, queue_name=self.queue_name, count=len(messages)
                    )
                    pipe.execute()
        except REDIS_DOWN as exc:
            # Dramatiq's consumer thread calls this while it closes after an error. A Redis that is still
            # down made it raise a bare redis.ConnectionError there, which killed the thread for good: the
            # worker process lived on and consumed nothing more from that queue (found by the soak).
            raise ConnectionClosed(exc) from None


class WakingConsumer(PollingConsumer):
    """Dramatiq's Redis consumer, which waits for a wake-up token instead of sleeping when it finds nothing.

    ``timeout`` (Dramatiq's ``worker_timeout``) is no longer the idle sleep: it is how often the consumer
    polls while it holds delayed messages, as Dramatiq's did. Raises ``ConnectionClosed`` when Redis fails.
    """

    def __init__(self, broker: Any, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.poll_s = timeout / 1000
        self.fallback_s = broker.wake_fallback_ms / 1000
        # With no backoff to compute, Dramatiq's __next__ returns None at once where it would have slept.
        self.timeout = 0
        self._wait_keys = [
            wake_key(broker.namespace, queue_name),
            stop_key(broker.namespace, broker.broker_id),
        ]
        self._etas: dict[str, float] = {}
        """eta of each delayed message handed out and not yet acked, by Redis message id."""
        self._lock = threading.Lock()
        self._slot_freed = threading.Event()

    def __next__(self) -> MessageProxy | None:
        self._slot_freed.clear()  # before the fetch: an ack from now on ends a wait for room at once
        unfetched: list[bytes] = []
        if not self.message_cache:
            # Dramatiq replaces this list by the result of its fetch, if it fetches: when it hands back this
            # very list, it did not fetch because the consumer was full. Reading the count of held messages
            # afterwards instead raced with the worker threads' acks: an ack in between made a full consumer
            # look idle, and it blocked on the wake-up list for the whole fallback with its queue full of
            # work (section 5 of the bench: 47 emails/s where the threads could do about twice that).
            self.message_cache = unfetched
        message = super().__next__()
        if message is None:
            self._wait(fetched=self.message_cache is not unfetched)
        elif message.options.get("eta") is not None:
            eta = message.options["eta"]
            with self._lock:  # Dramatiq's consumer thread replaces an eta that is not a number by "now"
                self._etas[message.options["redis_message_id"]] = eta if isinstance(eta, int | float) else 0
        return message

    def ack(self, message: MessageProxy) -> None:
        try:
            super().ack(message)
        finally:
            self._done(message)

    def nack(self, message: MessageProxy) -> None:
        try:
            super().nack(message)
        finally:
            self._done(message)

    def _done(self, message: MessageProxy) -> None:
        with self._lock:
            self._etas.pop(message.options.get("redis_message_id", ""), None)
        self._slot_freed.set()

    def _wait(self, *, fetched: bool) -> None:
        """Wait for work: until a token, room to fetch, the next delayed message's eta, or the fallback.

        ``fetched``: the consumer had room and fetched nothing; otherwise it was full and did not fetch.
        """
        with self._lock:
            next_eta = min(self._etas.values(), default=None)
        if next_eta is not None:
            # Redis times a BLPOP out only on its cron tick (100 ms at the default hz 10), too coarse for an
            # eta: while it holds delayed messages the consumer polls as Dramatiq's does, never past the eta.
            self._slot_freed.wait(max(0.0, min(self.poll_s, (next_eta - current_millis()) / 1000)))
        elif not fetched:
            self._slot_freed.wait(self.fallback_s)  # full: an ack, not Redis, says when to fetch again
        elif self.broker.stopping.is_set():
            self._slot_freed.wait(self.poll_s)  # its worker is stopping: it must see that soon, as Dramatiq's
        else:
            try:
                self.broker.wait_client.blpop(self._wait_keys, timeout=self.fallback_s)
            except REDIS_DOWN as exc:
                raise ConnectionClosed(exc) from None


class StopWaking(Middleware):
    """Ends the consumers' waits when their worker stops, so that a stop takes no longer than with polling.

    Dramatiq's ``Worker.stop`` lets consumers run (and heartbeat) until its worker threads are done, then
    waits for each consumer thread to notice it should stop. Each blocked consumer of this broker pops one
    token from the broker's own stop list, then polls every ``timeout`` ms instead of blocking again.
    """

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        stopping: threading.Event = broker.stopping  # type: ignore[attr-defined]
        stopping.set()
        key = stop_key(broker.namespace, broker.broker_id)  # type: ignore[attr-defined]
        try:
            with broker.client.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
                pipe.rpush(key, *[b"1"] * max(1, len(worker.consumers)))
                pipe.expire(key, 60)
                pipe.execute()
        except redis.RedisError:
            pass  # Redis is down: the consumers' blocking calls fail, and their threads stop anyway
