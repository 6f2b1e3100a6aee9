"""The course's dispatchers, beside the product's ``OutboxDispatcher``, for the lab and the bench.

- ``immediate`` / ``fixed_delay``: the course's way, enqueue to Redis right now, before the commit.
- ``none``: nothing (a benchmark baseline for the API's own cost).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from lab.strategies.knobs import Knobs
from services.api.dispatch import Dispatcher, OutboxDispatcher
from shared.broker import create_broker
from shared.database import POOL_SIZE
from shared.messages import Message
from shared.settings import Settings

# One per connection the API's database pool can hand out (pool plus overflow): an enqueue happens inside an
# open transaction, so no more can be waiting at once.
ENQUEUE_THREADS = 2 * POOL_SIZE


class NoDispatcher:
    """Sends nothing. Only for ``signup bench``'s baseline of what a signup costs without dispatch."""

    needs_redis = False

    async def dispatch(self, session: AsyncSession, message: Message, *, trace_id: str | None) -> None:
        return None

    async def close(self) -> None:
        return None


class EnqueueBeforeCommitDispatcher:
    """The course's way: enqueue the Dramatiq message to Redis now, inside the transaction, before the commit.

    This is what the lab measures against the outbox. The message leaves before the user is committed, so a
    worker may look for a user that is not visible yet (``delay_ms`` is the course's ``ProcessIn`` that hides
    most of that race), and a transaction that rolls back afterwards leaves a message for a user that never
    existed. An enqueue failure (Redis down) propagates and rolls the signup back.
    """

    needs_redis = True

    def __init__(self, settings: Settings, *, delay_ms: int | None) -> None:
        # The broker connects lazily, on the first enqueue.
        self._broker = create_broker(settings)
        self._delay_ms = delay_ms
        # RedisBroker is synchronous. Its calls get threads of their own: in asyncio's default executor they
        # would queue behind the argon2 hashes while their transaction holds a pooled connection, and under
        # load the pool would run dry (503s that measure the executor, not the course's strategy).
        self._executor = ThreadPoolExecutor(max_workers=ENQUEUE_THREADS, thread_name_prefix="enqueue")

    async def dispatch(self, session: AsyncSession, message: Message, *, trace_id: str | None) -> None:
        enqueued: dramatiq.Message[None] = dramatiq.Message(
            queue_name=message.queue,
            actor_name=message.actor,
            args=(msgspec.to_builtins(message),),
            kwargs={},
            options={"trace_id": trace_id},
            message_id=str(uuid.uuid4()),
        )
        enqueue = functools.partial(self._broker.enqueue, enqueued, delay=self._delay_ms)
        await asyncio.get_running_loop().run_in_executor(self._executor, enqueue)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._broker.close)
        self._executor.shutdown()


def build_dispatcher(settings: Settings, knobs: Knobs) -> Dispatcher:
    """The dispatcher ``DISPATCH_STRATEGY`` names."""
    match knobs.dispatch_strategy:
        case "outbox":
            return OutboxDispatcher()
        case "fixed_delay":
            return EnqueueBeforeCommitDispatcher(settings, delay_ms=knobs.task_process_in_ms)
        case "immediate":
            return EnqueueBeforeCommitDispatcher(settings, delay_ms=None)
        case "none":
            return NoDispatcher()
