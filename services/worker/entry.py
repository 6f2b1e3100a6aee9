"""The worker's one factory, and the module the Dramatiq CLI loads (``dramatiq services.worker.entry:setup``).

``build_worker(settings)`` builds the broker, its middleware and the ``send_verify_email`` actor; nothing
happens at import time. ``setup()`` is what a worker process calls at start: settings, logging, broker,
``dramatiq.set_broker``. The actor is bound to its broker explicitly, so no global is needed to declare it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import msgspec
from dramatiq import Broker, Middleware, Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from services.worker.errors import PermanentError
from services.worker.mailer import Mailer, SmtpMailer
from services.worker.metrics import WorkerMetrics
from services.worker.middleware import FailureObserver, MessageContext
from services.worker.verify import send_verify_email
from shared.broker import create_broker
from shared.database import create_engine, create_sessionmaker
from shared.logging import configure_logging
from shared.messages import SEND_VERIFY_EMAIL_ACTOR, SEND_VERIFY_EMAIL_QUEUE, SendVerifyEmail
from shared.settings import Settings, load_settings


class BadPayload(PermanentError):
    """The message's arguments are not one ``SendVerifyEmail`` payload."""


@dataclass
class WorkerContext:
    """What every message of one worker process shares: one engine (its pool), one mailer, the metrics."""

    settings: Settings
    mailer: Mailer
    engine: AsyncEngine
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)

    def __post_init__(self) -> None:
        # The engine connects lazily, on the AsyncIO middleware's event loop thread, where every async
        # actor of this process runs: one pool per process, not one per message.
        self.sessions = create_sessionmaker(self.engine)


def decode(args: tuple[Any, ...], kwargs: dict[str, Any]) -> SendVerifyEmail:
    """The payload of a message; raises ``BadPayload`` for anything else."""
    if len(args) != 1 or kwargs:
        raise BadPayload("expected exactly one positional argument")
    try:
        return msgspec.convert(args[0], SendVerifyEmail)
    except msgspec.ValidationError as exc:
        raise BadPayload(f"invalid payload: {exc}") from None


def declare_actor(broker: Broker, context: WorkerContext) -> dramatiq.Actor[..., Any]:
    """Declare ``send_verify_email`` on ``broker``: permanent errors skip the retries (``throws``)."""

    async def send_verify_email_actor(*args: Any, **kwargs: Any) -> None:
        command = decode(args, kwargs)
        message = CurrentMessage.get_current_message()
        assert message is not None, "the CurrentMessage middleware is missing"
        sent = await send_verify_email(
            context.sessions,
            mailer=context.mailer,
            settings=context.settings,
            command=command,
            message_id=message.message_id,
        )
        if sent:
            context.metrics.emails_sent.inc()

    return dramatiq.Actor(
        send_verify_email_actor,
        broker=broker,
        actor_name=SEND_VERIFY_EMAIL_ACTOR,
        queue_name=SEND_VERIFY_EMAIL_QUEUE,
        priority=0,
        options={"throws": (PermanentError,)},
    )


class _Lifecycle(Middleware):
    """Serves metrics once a worker boots; disposes the engine on the event loop before it stops."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        s = self.context.settings
        self.context.metrics.serve(port=s.worker_metrics_port, tries=s.worker_processes)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        from dramatiq.asyncio import get_event_loop_thread

        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            loop_thread.run_coroutine(self.context.engine.dispose())


def build_worker(settings: Settings, *, mailer: Mailer | None = None) -> tuple[RedisBroker, WorkerContext]:
    """The worker's broker with its middleware and actor, and the context its messages share."""
    context = WorkerContext(
        settings=settings, mailer=mailer or SmtpMailer(settings), engine=create_engine(settings.database_url)
    )
    broker = create_broker(
        settings,
        extra_middleware=[MessageContext(), FailureObserver(context.metrics), _Lifecycle(context)],
    )
    declare_actor(broker, context)
    return broker, context


def setup() -> None:
    """Called by the Dramatiq CLI in each worker process: logging, the global broker, then the actor."""
    settings = load_settings()
    # The CLI points stdout at a pipe to its main process, which writes to stderr; log to the real stdout.
    configure_logging(
        service="worker", log_format=settings.log_format, log_level=settings.log_level, stream=sys.__stdout__
    )
    broker, _ = build_worker(settings)
    dramatiq.set_broker(broker)
