"""What the broker holds in Redis, read without consuming it, through ``StreamsBroker``'s own methods.

Every queue is a stream (``<queue>`` for messages ready or being handled, ``<queue>.DQ`` for delayed ones)
and dead letters are a stream of their own. Nothing here names a queue: it finds them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dramatiq

from shared.broker import NAMESPACE, StreamsBroker


@contextmanager
def _broker(redis_url: str, namespace: str) -> Iterator[StreamsBroker]:
    broker = StreamsBroker(url=redis_url, namespace=namespace, middleware=[])
    try:
        yield broker
    finally:
        broker.client.close()  # not broker.close(): this reader is no consumer to deregister


def held_messages(redis_url: str, *, namespace: str = NAMESPACE) -> dict[str, list[dramatiq.Message[Any]]]:
    """Every message Redis holds, decoded, by queue (``q``, ``q.DQ``; dead letters under ``q.XQ``)."""
    with _broker(redis_url, namespace) as broker:
        found = {queue: broker.messages(queue) for queue in broker.streams()}
        for letter in broker.dead_letters(count=1_000_000):
            found.setdefault(f"{letter.queue}.XQ", []).append(letter.message)
        return found


@dataclass
class QueuedMessages:
    """Messages waiting for a worker in any queue: ``ready`` ones (or being handled) and ``delayed`` ones."""

    ready: list[dramatiq.Message[Any]]
    delayed: list[dramatiq.Message[Any]]

    @property
    def all(self) -> list[dramatiq.Message[Any]]:
        return self.ready + self.delayed

    def count_by_id(self) -> dict[str, int]:
        """How many copies of each ``message_id`` Redis holds (a duplicate publish shows as 2)."""
        return dict(Counter(message.message_id for message in self.all))


def queued_messages(redis_url: str, *, namespace: str = NAMESPACE) -> QueuedMessages:
    """The messages of every queue, dead letters left out. Usable from sync and async code (it blocks)."""
    held = held_messages(redis_url, namespace=namespace)
    return QueuedMessages(
        ready=[m for queue, found in held.items() if not queue.endswith((".DQ", ".XQ")) for m in found],
        delayed=[m for queue, found in held.items() if queue.endswith(".DQ") for m in found],
    )


def nothing_pending(redis_url: str, *, namespace: str = NAMESPACE) -> bool:
    """No message ready, delayed or held unacknowledged in any queue (dead letters do not count).

    Raises ``redis.RedisError`` when Redis cannot be reached.
    """
    with _broker(redis_url, namespace) as broker:
        return not any(broker.waiting(queue) for queue in broker.streams())


def held_by_workers(redis_url: str, *, namespace: str = NAMESPACE) -> int:
    """How many messages some worker was delivered and has not acknowledged, over every queue."""
    with _broker(redis_url, namespace) as broker:
        return sum(broker.held(queue) for queue in broker.streams())


def heartbeats_since(redis_url: str, since: float, *, namespace: str = NAMESPACE) -> int:
    """How many worker processes' consumers beat after ``since`` (wall clock): an idle worker's do."""
    with _broker(redis_url, namespace) as broker:
        return broker.beats_since(int(since * 1000))
