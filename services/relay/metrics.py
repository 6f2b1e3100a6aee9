"""The relay's Prometheus metrics, in a registry of its own (several relays may share a test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class RelayMetrics:
    """Backlog, age of the oldest due unpublished row, published total and publish errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.backlog = Gauge("outbox_backlog", "Unpublished outbox rows that are due", registry=self.registry)
        self.oldest_age = Gauge(
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest due unpublished outbox row",
            registry=self.registry,
        )
        self.published = Counter(
            "outbox_published", "Outbox rows published to the broker", registry=self.registry
        )
        self.errors = Counter("outbox_publish_errors", "Failed publish batches", registry=self.registry)

    def serve(self, *, port: int) -> None:
        """Expose ``/metrics`` on ``port`` (a daemon thread); does nothing for port 0."""
        if port:
            start_http_server(port, registry=self.registry)
