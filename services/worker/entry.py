"""The worker's one factory, ``build_worker(settings)``, which ``signup worker`` (main.py) runs.

It builds the broker, its middleware and the ``send_verify_email`` actor; nothing happens at import time. The
actor is bound to its broker explicitly, so Dramatiq's global broker is never set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dramatiq
import msgspec
from dramatiq import Broker, Middleware, Worker
from dramatiq.middleware import CurrentMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from services.worker.errors import PermanentError, TransientError
from services.worker.mailer import Mailer, SmtpMailer
from services.worker.metrics import WorkerMetrics
from services.worker.middleware import FailureObserver, MessageContext
from services.worker.verify import send_verify_email
from shared.broker import SignupRedisBroker, create_broker
from shared.database import create_engine, create_sessionmaker, database_unavailable
from shared.messages import SEND_VERIFY_EMAIL_ACTOR, SEND_VERIFY_EMAIL_QUEUE, SendVerifyEmail
from shared.settings import Settings


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
        try:
            sent = await send_verify_email(
                context.sessions,
                mailer=context.mailer,
                settings=context.settings,
                command=command,
                message_id=message.message_id,
            )
        except Exception as exc:
            # A database that is down or restarting is a transient failure like an SMTP 4xx (DESIGN §4).
            if database_unavailable(exc):
                raise TransientError(f"database unavailable: {type(exc).__name__}") from None
            raise
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
        self.context.metrics.serve(port=self.context.settings.worker_metrics_port)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        from dramatiq.asyncio import get_event_loop_thread

        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            loop_thread.run_coroutine(self.context.engine.dispose())


def build_worker(
    settings: Settings, *, mailer: Mailer | None = None
) -> tuple[SignupRedisBroker, WorkerContext]:
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
