"""How the worker's broker is wired: ``build_broker(settings)`` and the warm-up of a fresh process.

``signup worker`` (main.py) runs ``build_broker``: the broker, its middleware and one actor per registered
message (``actors.py``), and the context the messages share; main.py puts a Dramatiq ``Worker`` on it.
Nothing happens at import time. Actors are bound to their broker explicitly, so Dramatiq's global broker is
never set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping

from dramatiq import Broker, Middleware, Worker
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Retries

from services.worker import emails, handled_mark, handlers
from services.worker.actors import Handler, WorkerContext, declare_actors
from services.worker.handled_mark import DeadLetterHandled
from services.worker.mailer import Mailer, SmtpMailer
from services.worker.middleware import FailureObserver, MessageContext, MessageSpans
from shared.broker import POLL_MS, StreamsBroker, create_broker
from shared.database import create_engine
from shared.keys import server_key
from shared.logging import get_logger
from shared.messages import Message
from shared.settings import Settings
from shared.telemetry import tracing_enabled

log = get_logger()


class _Lifecycle(Middleware):
    """Serves metrics and warms the connections up once a worker boots; disposes the engine on the event
    loop before it stops."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self._warming: concurrent.futures.Future[None] | None = None

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self.context.metrics.serve(port=self.context.settings.worker_metrics_port)
        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            # Not waited for: a message that arrives first opens its own connections, as it always did.
            self._warming = asyncio.run_coroutine_threadsafe(warm_up(self.context), loop_thread.loop)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        if self._warming is not None:
            self._warming.cancel()  # a stop while an SMTP server hangs the warm-up does not wait for it
        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            loop_thread.run_coroutine(self.context.engine.dispose())


async def warm_up(context: WorkerContext) -> None:
    """Open a pooled database connection and an SMTP connection before the first message needs them.

    Without it the first message a process handles pays for both (a PostgreSQL connect with SQLAlchemy's
    first-connection queries, an SMTP connect and EHLO): the first email after a deploy, and with several
    processes the first one each of them takes. On that connection it compiles and prepares the statements a
    message runs (rolled back: nothing is written). A failure is logged and left to the first message. It
    also compiles the email templates (``emails.warm_up``).
    """
    try:
        emails.warm_up()
    except Exception as exc:
        log.warning("worker.warm_up_failed", part="email", error=type(exc).__name__)
    try:
        async with context.engine.connect() as connection, connection.begin() as transaction:
            await handlers.prepare_statements(connection)
            await handled_mark.prepare_statement(connection)
            await transaction.rollback()
    except Exception as exc:
        log.warning("worker.warm_up_failed", part="database", error=type(exc).__name__)
    if isinstance(context.mailer, SmtpMailer):
        try:
            await context.mailer.warm_up()
        except Exception as exc:
            log.warning("worker.warm_up_failed", part="smtp", error=type(exc).__name__)


def build_broker(
    settings: Settings,
    *,
    mailer: Mailer | None = None,
    poll_ms: int = POLL_MS,
    handlers: Mapping[type[Message], Handler] | None = None,
) -> tuple[StreamsBroker, WorkerContext]:
    """The worker's broker (``poll_ms``: see ``StreamsBroker``) with its middleware and actors, and the
    context its messages share. ``handlers`` replaces the handler of the message classes it names."""
    server_key(settings.worker_code_secret, setting="WORKER_CODE_SECRET")  # an unset key warns at start
    context = WorkerContext(
        settings=settings,
        mailer=mailer or SmtpMailer(settings),
        # No ping on checkout: the actor handles a message once more on a connection that died pooled.
        engine=create_engine(settings.database_url, pre_ping=False),
    )
    broker = create_broker(
        settings,
        poll_ms=poll_ms,
        extra_middleware=[
            MessageContext(),
            DeadLetterHandled(context.engine),
            FailureObserver(context.metrics),
            _Lifecycle(context),
        ],
    )
    if tracing_enabled():
        # Before Retries, so that its after-hook sees whether Retries dead-lettered the message.
        broker.add_middleware(MessageSpans(), before=Retries)
    declare_actors(broker, context, handlers=handlers)
    return broker, context
