"""The worker's one factory, ``build_worker(settings)``, which ``signup worker`` (main.py) runs.

It builds the broker, its middleware and one actor per registered message (``actors.py``); nothing happens
at import time. Actors are bound to their broker explicitly, so Dramatiq's global broker is never set.
"""

from __future__ import annotations

from dramatiq import Broker, Middleware, Worker
from dramatiq.middleware import Retries

from services.worker.actors import WorkerContext, declare_actors
from services.worker.handled import DeadLetterHandled, ForgetLocator
from services.worker.mailer import Mailer, SmtpMailer
from services.worker.middleware import FailureObserver, MessageContext, MessageSpans
from shared.broker import SignupRedisBroker, create_broker
from shared.database import create_engine
from shared.settings import Settings
from shared.telemetry import tracing_enabled


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
    """The worker's broker with its middleware and actors, and the context its messages share."""
    context = WorkerContext(
        settings=settings,
        mailer=mailer or SmtpMailer(settings),
        # No ping on checkout: the actor handles a message once more on a connection that died pooled.
        engine=create_engine(settings.database_url, pre_ping=False),
    )
    broker = create_broker(
        settings,
        extra_middleware=[
            MessageContext(),
            # After-hooks run in reverse: a dead letter's error is recorded before the database is written.
            DeadLetterHandled(context.engine),
            ForgetLocator(),
            FailureObserver(context.metrics),
            _Lifecycle(context),
        ],
    )
    if tracing_enabled():
        # Before Retries, so that its after-hook sees whether Retries dead-lettered the message.
        broker.add_middleware(MessageSpans(), before=Retries)
    declare_actors(broker, context)
    return broker, context
