"""The worker's one factory, and the module the Dramatiq CLI loads (``dramatiq services.worker.entry:setup``).

``build_worker(settings)`` builds the broker, its middleware and one actor per registered message; nothing
happens at import time. ``setup()`` is what a worker process calls at start: settings, logging, broker,
``dramatiq.set_broker``. Actors are bound to their broker explicitly, so no global is needed to declare them.
"""

from __future__ import annotations

import sys

import dramatiq
from dramatiq import Broker, Middleware, Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries

from services.worker.actors import WorkerContext, declare_actors
from services.worker.mailer import Mailer, SmtpMailer
from services.worker.middleware import FailureObserver, MessageContext, MessageSpans
from shared.broker import create_broker
from shared.database import create_engine
from shared.logging import configure_logging
from shared.settings import Settings, load_settings
from shared.telemetry import configure_tracing, tracing_enabled


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
    if tracing_enabled():
        # Before Retries, so that its after-hook sees whether Retries dead-lettered the message.
        broker.add_middleware(MessageSpans(), before=Retries)
    declare_actors(broker, context)
    return broker, context


def setup() -> None:
    """Called by the Dramatiq CLI in each worker process: logging, the global broker, then the actor."""
    settings = load_settings()
    # The CLI points stdout at a pipe to its main process, which writes to stderr; log to the real stdout.
    configure_logging(
        service="worker", log_format=settings.log_format, log_level=settings.log_level, stream=sys.__stdout__
    )
    configure_tracing(service="worker")
    broker, _ = build_worker(settings)
    dramatiq.set_broker(broker)
