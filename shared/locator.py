"""Where each event's message is in Redis, so that a bounded check can tell a lost message from a waiting one.

Dramatiq's Redis broker stores a message under a random ``redis_message_id``, new on every enqueue (a retry
is a new enqueue), so "is event E anywhere in Redis" would mean scanning every queue's hash. Instead every
enqueue path of this project (``SignupRedisBroker.do_enqueue``: Dramatiq's retries, the delay-queue
hand-over, ``signup dlq replay``, the course strategies; and the relay's batch pipeline) writes, in the SAME
MULTI/EXEC as the message, one field of the hash ``<ns>:__locators__``: event id (the Dramatiq message id) →
``"<queue> <redis_message_id>"``. Whatever loses the message (``FLUSHALL``, a restart without persistence, a
failover) loses its locator with it, or leaves a locator that points at nothing.

``locate.lua`` answers, for a list of event ids and in one script call, whether each message is still
somewhere a worker will get it (docs/DESIGN.md §13): dead-lettered (``<q>.XQ`` and ``<q>.XQ.msgs``), or its
data in ``<queue>.msgs`` and it either waits in the queue's list (the list key exists: Redis deletes an
empty list, and loses a list only as a whole key) or is held by a worker (``__acks__.<worker>.<queue>`` of
any worker in ``__heartbeats__``, live or dead: maintenance requeues a dead worker's). The cost is
O(ids x workers), independent of the queues' backlog. The worker deletes the field once the handler
succeeded (``forget``); a dead letter keeps it until replayed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOCATE_LUA = (Path(__file__).with_name("locate.lua")).read_text()


def locators_key(namespace: str) -> str:
    """The hash of event id → ``"<queue> <redis_message_id>"``."""
    return f"{namespace}:__locators__"


def locator(queue_name: str, redis_message_id: str) -> str:
    """A locator's value (queue names have no spaces: Dramatiq allows ``[a-zA-Z_][a-zA-Z0-9._-]*``)."""
    return f"{queue_name} {redis_message_id}"


def locate(client: Any, namespace: str, event_ids: list[str]) -> list[bool]:
    """For each of ``event_ids``, whether its message is still in Redis where a worker will get it.

    One ``EVALSHA`` (redis-py loads the script on first use). Raises redis-py's errors.
    """
    if not event_ids:
        return []
    script = client.register_script(LOCATE_LUA)
    found = script(keys=[namespace], args=event_ids)
    return [bool(flag) for flag in found]


def forget(client: Any, namespace: str, event_id: str) -> None:
    """Drop the locator of an event whose handler succeeded. Raises redis-py's errors."""
    client.hdel(locators_key(namespace), event_id)
