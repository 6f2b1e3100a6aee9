"""``signup worker``: one Dramatiq ``Worker`` in this process until SIGTERM or SIGINT, then exit 0.

The first signal stops it gracefully: its threads finish the messages in hand for up to ``STOP_GRACE_S``, and
everything else this process holds goes back to Redis. A second signal stops waiting: what is still held goes
back to Redis at once and the process exits. The same holds when the signal reaches the whole process group
(systemd, honcho, a terminal): there is only one process, and it counts signals, not senders. Run more
``signup worker`` processes to scale (``docker compose up --scale worker=N``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import signal
import threading
from collections.abc import Mapping

import redis
import uvloop
from dramatiq import Worker
from dramatiq.common import join_all
from dramatiq.errors import BrokerConnectionError

from services.worker.actors import Handler
from services.worker.wiring import build_broker
from shared.broker import StreamsBroker
from shared.logging import configure_logging, get_logger
from shared.messages import Message
from shared.settings import Settings
from shared.telemetry import configure_tracing

log = get_logger()

# How often a consumer polls while it holds delayed messages (their etas must not wait for a blocked read)
# or while its worker stops; an idle consumer blocks in Redis instead (DESIGN §5).
POLL_TIMEOUT_VARIABLE = "dramatiq_worker_timeout"
DEFAULT_POLL_TIMEOUT_MS = 50
# Dramatiq gives its worker threads and consumers one timeout: an idle thread wakes up that often, only to
# see whether the worker is stopping (a message for it wakes it at once), and an idle consumer blocks that
# long in Redis before it reads again (a new message ends the block at once).
THREAD_WAKE_MS = 1000
# How long the messages in hand may take to finish: below the 10 s that compose, systemd and Kubernetes
# wait before SIGKILL, with room to stop the consumers and hand back the rest.
STOP_GRACE_S = 5.0
_STOP_SLACK_S = 2.0
_STOPPED = 0  # put on the signal queue when Worker.stop has returned; never a signal number


def run(
    settings: Settings,
    args: argparse.Namespace | None = None,
    *,
    handlers: Mapping[type[Message], Handler] | None = None,
) -> int:
    """Consume until the first SIGTERM/SIGINT, stop as described above and return 0. ``handlers``: see
    ``build_broker``."""
    configure_logging(service="worker", log_format=settings.log_format, log_level=settings.log_level)
    configure_tracing(service="worker")
    use_uvloop()
    broker, worker = build_worker(settings, os.environ, handlers=handlers)
    events: queue.SimpleQueue[int] = queue.SimpleQueue()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # SimpleQueue.put may be called from a signal handler; the main thread does the work.
        signal.signal(signum, lambda received, _frame: events.put(received))
    worker.start()
    try:
        log.info(
            "worker.started", queues=sorted(broker.get_declared_queues()), threads=settings.worker_threads
        )
        received = signal.Signals(events.get())
        log.info("worker.stopping", signal=received.name, grace_s=STOP_GRACE_S)
    finally:
        # Even if logging fails (a stdout nobody reads any more, under a SIGKILLed `signup dev`).
        stop(worker, broker, events)
    return 0


def use_uvloop() -> None:
    """Make the loop every actor runs on a uvloop: Dramatiq's AsyncIO middleware creates it with
    ``asyncio.new_event_loop()``, which follows the event loop policy."""
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def build_worker(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    handlers: Mapping[type[Message], Handler] | None = None,
) -> tuple[StreamsBroker, Worker]:
    """The broker (polling every ``poll_timeout(environ)`` ms where it polls), and a Dramatiq ``Worker`` on
    the queues of its declared actors (their delay queues follow), its threads waking and its idle
    consumers reading every ``THREAD_WAKE_MS``. Nothing connects yet."""
    broker, _ = build_broker(settings, poll_ms=poll_timeout(environ), handlers=handlers)
    worker = Worker(
        broker,
        queues=broker.get_declared_queues(),
        worker_threads=settings.worker_threads,
        worker_timeout=THREAD_WAKE_MS,
    )
    return broker, worker


def stop(worker: Worker, broker: StreamsBroker, events: queue.SimpleQueue[int]) -> None:
    """Stop ``worker`` (see ``stop_worker``), then hand back to Redis whatever this process still holds."""
    graceful = stop_worker(worker, events)
    if not graceful:
        # Worker.stop keeps its consumers fetching until the threads are done (for the heartbeat); what they
        # fetched after the hand back would wait for the heartbeat timeout.
        for consumer in worker.consumers.values():
            consumer.stop()
        join_all(worker.consumers.values(), _STOP_SLACK_S * 1000)
    handed_back = hand_back(broker)
    try:
        if graceful:
            log.info("worker.stopped", handed_back=handed_back)
        else:
            log.warning("worker.stopped without waiting", handed_back=handed_back)
    finally:
        if not graceful:
            # The event loop thread (not a daemon) may still run the message in hand, and the interpreter
            # would wait for it; that message is back in Redis, so there is nothing left to wait for.
            os._exit(0)


def poll_timeout(environ: Mapping[str, str]) -> int:
    """The consumers' poll in ms: ``dramatiq_worker_timeout``, else ``DEFAULT_POLL_TIMEOUT_MS``.

    Dramatiq reads the same variable when it is imported, and fails there on anything but an integer.
    """
    return int(environ.get(POLL_TIMEOUT_VARIABLE) or DEFAULT_POLL_TIMEOUT_MS)


def stop_worker(worker: Worker, events: queue.SimpleQueue[int]) -> bool:
    """Run ``worker.stop`` (threads finish their messages, prefetched ones go back) in a helper thread.

    Returns True when it finished; False when a second signal came first or it overran the grace period.
    """

    def stop_then_report() -> None:
        try:
            worker.stop(timeout=int(STOP_GRACE_S * 1000))
        finally:
            events.put(_STOPPED)

    threading.Thread(target=stop_then_report, name="worker-stop", daemon=True).start()
    try:
        return events.get(timeout=STOP_GRACE_S + _STOP_SLACK_S) == _STOPPED
    except queue.Empty:
        return False


def hand_back(broker: StreamsBroker) -> int | None:
    """Requeue what this process still holds (``StreamsBroker.hand_back_all``); None if Redis is down."""
    try:
        return broker.hand_back_all()
    except (BrokerConnectionError, redis.RedisError) as exc:
        # The heartbeat timeout still redelivers them: say so, and stop all the same.
        log.warning("worker.hand_back failed", error=type(exc).__name__)
        return None
