"""Worker metrics (Prometheus): emails sent by kind, retries scheduled and dead letters by message.

Each worker process serves its own counters on the first free port from ``WORKER_METRICS_PORT`` upwards
(``WORKER_PROCESSES`` ports at most): scrape each, or sum them. 0 turns metrics off.
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

    def serve(self, *, port: int, tries: int) -> int | None:
        """Serve on the first free port of ``port`` … ``port + tries - 1``; None if off or none was free."""
        if port == 0:
            return None
        for candidate in range(port, port + max(tries, 1)):
            try:
                start_http_server(candidate, registry=self.registry)
            except OSError:
                continue
            log.info("metrics endpoint", port=candidate)
            return candidate
        log.warning("no free port for metrics", first_port=port)
        return None
