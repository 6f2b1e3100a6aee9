"""What Dramatiq holds in Redis, read without consuming it: the one place that knows its key layout.

A ``RedisBroker`` keeps each message's body in the hash ``<ns>:<queue>.msgs`` from its enqueue until a
worker acknowledges it (the queue lists only hold ids): ``<queue>`` for messages ready or being handled,
``<queue>.DQ`` for delayed ones, ``<queue>.XQ`` for dead-lettered ones. Every broker command also records
the broker's heartbeat in ``<ns>:__heartbeats__``. Nothing here names a queue: it finds them all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis

NAMESPACE = "dramatiq"
"""Dramatiq's default, which shared/broker.py keeps."""


def held_messages(redis_url: str, *, namespace: str = NAMESPACE) -> dict[str, list[dramatiq.Message[Any]]]:
    """Every message Redis holds, decoded, by the queue whose hash holds it (``q``, ``q.DQ``, ``q.XQ``)."""
    client = redis.Redis.from_url(redis_url)
    try:
        found: dict[str, list[dramatiq.Message[Any]]] = {}
        for key in client.scan_iter(match=f"{namespace}:*.msgs"):
            queue = key.decode()[len(namespace) + 1 : -len(".msgs")]
            bodies: list[bytes] = client.hvals(key)  # type: ignore[assignment]
            found[queue] = [dramatiq.Message.decode(body) for body in bodies]
        return found
    finally:
        client.close()


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
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{namespace}:*.msgs"):
            if not key.endswith(b".XQ.msgs") and client.hlen(key):
                return False
        return True
    finally:
        client.close()


def heartbeats_since(redis_url: str, since: float, *, namespace: str = NAMESPACE) -> int:
    """How many brokers issued a command after ``since`` (wall clock): an idle worker's consumers do."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcount(f"{namespace}:__heartbeats__", int(since * 1000), "+inf"))
    finally:
        client.close()
