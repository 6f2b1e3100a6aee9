"""Worker metrics (Prometheus): emails sent by kind, retries scheduled and dead letters by message.

Each ``signup worker`` process serves its own counters on ``WORKER_METRICS_PORT``: scrape each, or sum them.
Several on one host need a port each (a taken port is logged and the worker runs without metrics); 0 turns
metrics off.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server

from shared.logging import get_logger

log = get_logger()


class WorkerMetrics:
    """The worker's counters, in a registry of their own (tests build several workers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.emails_sent = Counter(
            "signup_worker_emails_sent_total",
            "Emails accepted by SMTP, by kind of email",
            ["kind"],
            registry=self.registry,
        )
        self.emails_capped = Counter(
            "signup_worker_emails_capped_total",
            "Emails not sent: their mailbox had MAILBOX_MAX_EMAILS_PER_DAY already, by kind of email",
            ["kind"],
            registry=self.registry,
        )
        self.retries = Counter(
            "signup_worker_retries_total",
            "Failed attempts scheduled for a retry, by message (actor)",
            ["message"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "signup_worker_dead_letters_total",
            "Messages moved to the dead letters, by message (actor)",
            ["message"],
            registry=self.registry,
        )

    def serve(self, *, port: int) -> int | None:
        """Serve ``/metrics`` on ``port`` (a daemon thread); None if ``port`` is 0 or already taken."""
        if port == 0:
            return None
        try:
            start_http_server(port, registry=self.registry)
        except OSError as exc:
            log.warning("metrics port unavailable", port=port, error=exc.strerror)
            return None
        log.info("metrics endpoint", port=port)
        return port
