"""Dramatiq's dead letters in Redis: list them, and requeue them to their original queue.

RedisBroker keeps a dead letter in ``<ns>:<queue>.XQ`` (a sorted set: Redis message id → when) and
``<ns>:<queue>.XQ.msgs`` (Redis message id → encoded message). The error is kept here in
``<ns>:<queue>.XQ.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name

# Options that belong to one delivery, not to the message: a replay starts afresh.
_DELIVERY_OPTIONS = ("retries", "traceback", "eta", "redis_message_id", "requeue_timestamp", "last_error")


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    redis_id: str
    message: Message[Any]
    dead_at: datetime
    error: str


def _key(broker: RedisBroker, queue: str, suffix: str = "") -> str:
    return f"{broker.namespace}:{q_name(queue)}.XQ{suffix}"


def record_error(broker: Any, message: Any, error: str) -> None:
    """Keep ``error`` beside the dead letter ``message`` just became."""
    if isinstance(broker, RedisBroker):
        key = _key(broker, message.queue_name, ".errors")
        broker.client.hset(key, message.options["redis_message_id"], error)


def list_dead_letters(broker: RedisBroker) -> list[DeadLetter]:
    """Every dead letter of every queue, oldest first."""
    client: Any = broker.client  # redis-py's sync/async union types get in the way here
    letters: list[DeadLetter] = []
    for raw_key in client.scan_iter(match=f"{broker.namespace}:*.XQ"):
        queue = raw_key.decode().removeprefix(f"{broker.namespace}:").removesuffix(".XQ")
        errors = client.hgetall(_key(broker, queue, ".errors"))
        for redis_id, score in client.zrange(raw_key, 0, -1, withscores=True):
            data = client.hget(_key(broker, queue, ".msgs"), redis_id)
            if data is None:
                continue
            letters.append(
                DeadLetter(
                    queue=queue,
                    redis_id=redis_id.decode(),
                    message=Message.decode(data),
                    dead_at=datetime.fromtimestamp(score / 1000, UTC),
                    error=errors.get(redis_id, b"").decode() or "unknown",
                )
            )
    return sorted(letters, key=lambda letter: letter.dead_at)


def replay(broker: RedisBroker, letter: DeadLetter) -> Message[Any]:
    """Requeue ``letter`` with its message id (the worker's idempotency key) and fresh retries, then drop it.

    Enqueue first, remove second: a crash in between leaves a duplicate, which the worker absorbs.
    """
    options = {k: v for k, v in letter.message.options.items() if k not in _DELIVERY_OPTIONS}
    fresh: Message[Any] = Message(
        queue_name=q_name(letter.message.queue_name),
        actor_name=letter.message.actor_name,
        args=letter.message.args,
        kwargs=letter.message.kwargs,
        options=options,
        message_id=letter.message.message_id,
        message_timestamp=letter.message.message_timestamp,
    )
    enqueued = broker.enqueue(fresh)
    broker.client.zrem(_key(broker, letter.queue), letter.redis_id)
    broker.client.hdel(_key(broker, letter.queue, ".msgs"), letter.redis_id)
    broker.client.hdel(_key(broker, letter.queue, ".errors"), letter.redis_id)
    return enqueued
