"""One Dramatiq actor per registered message, all declared by the same generic function.

The actor parses the message's one argument into its ``Message`` class, calls the class's handler with the
worker process's shared context, the message id (the outbox event id, the idempotency key) and the
message's one database connection, records the event as handled on that connection (``handled_mark``), and
maps a database outage to a retry. A payload that is not the class's struct is a ``BadPayload``:
dead-lettered at once, since no retry can mend it.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import msgspec
from dramatiq import Broker
from dramatiq.middleware import CurrentMessage
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.worker.errors import PermanentError, TransientError
from services.worker.handled_mark import mark_handled
from services.worker.mailer import Mailer
from services.worker.metrics import WorkerMetrics
from shared.database import database_unavailable
from shared.logging import get_logger
from shared.messages import Message, registered
from shared.settings import Settings

Handler = Callable[..., Awaitable[None]]

log = get_logger()


class BadPayload(PermanentError):
    """The message's arguments are not one payload of the actor's message class."""


@dataclass
class WorkerContext:
    """What every message of one worker process shares: one engine (its pool), one mailer, the metrics.

    The engine connects lazily, on the AsyncIO middleware's event loop thread, where every async actor of
    this process runs: one pool per process, not one per message.
    """

    settings: Settings
    mailer: Mailer
    engine: AsyncEngine
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)


def decode(message_class: type[Message], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Message:
    """The payload of a message as ``message_class``; raises ``BadPayload`` for anything else."""
    if len(args) != 1 or kwargs:
        raise BadPayload("expected exactly one positional argument")
    try:
        return msgspec.convert(args[0], message_class)
    except msgspec.ValidationError as exc:
        raise BadPayload(f"invalid payload: {exc}") from None


async def _handle(handler: Handler, payload: Message, *, context: WorkerContext, message_id: str) -> None:
    """Run ``handler`` and mark the event handled, on one pooled connection.

    The pool does not ping a connection before lending it (three round trips on every message): a
    connection that died while pooled (PostgreSQL restarted) fails its first statement instead, SQLAlchemy
    then discards every connection pooled before it, and the message is handled once more at once, on a
    fresh one. Handlers are idempotent on the message id, so running one again is safe.
    """
    for attempt in (1, 2):
        try:
            async with context.engine.connect() as connection:
                await handler(payload, context=context, message_id=message_id, connection=connection)
                # Before the ack: a message gone from Redis was handled in the database first.
                await mark_handled(connection, message_id)
            return
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
            log.info("stale database connection discarded; handling the message again")


def declare_actors(
    broker: Broker, context: WorkerContext, *, handlers: Mapping[type[Message], Handler] | None = None
) -> list[dramatiq.Actor[..., Any]]:
    """Declare one actor on ``broker`` for every registered message; its queues are then the broker's.

    A message class in ``handlers`` is handled by the function given there instead of the one it names.
    Raises ``ImportError`` or ``AttributeError`` when a message names a handler that does not exist.
    """
    handlers = handlers or {}
    return [
        declare_actor(broker, message_class, context, handler=handlers.get(message_class))
        for message_class in registered()
    ]


def declare_actor(
    broker: Broker, message_class: type[Message], context: WorkerContext, *, handler: Handler | None = None
) -> dramatiq.Actor[..., Any]:
    """The actor for ``message_class`` (run by ``handler``, default the one the class names): permanent
    errors skip the retries (``throws``)."""
    if handler is None:
        handler = pkgutil.resolve_name(message_class.handler)

    async def actor(*args: Any, **kwargs: Any) -> None:
        payload = decode(message_class, args, kwargs)
        current = CurrentMessage.get_current_message()
        assert current is not None, "the CurrentMessage middleware is missing"
        try:
            await _handle(handler, payload, context=context, message_id=current.message_id)
        except Exception as exc:
            # A database that is down or restarting is a transient failure like an SMTP 4xx (DESIGN §5).
            if database_unavailable(exc):
                raise TransientError(f"database unavailable: {type(exc).__name__}") from None
            raise

    actor.__name__ = actor.__qualname__ = message_class.actor
    return dramatiq.Actor(
        actor,
        broker=broker,
        actor_name=message_class.actor,
        queue_name=message_class.queue,
        priority=0,
        options={"throws": (PermanentError,)},
    )
