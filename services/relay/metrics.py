"""The relay's Prometheus metrics, in a registry of its own (several relays may share a test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class RelayMetrics:
    """Backlog, age of the oldest due unpublished row, published total, publish errors, and reconciliation."""

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
        self.republished = Counter(
            "outbox_republished",
            "Published events whose message Redis had lost, published again by reconciliation",
            registry=self.registry,
        )
        self.oldest_unhandled_age = Gauge(
            "outbox_oldest_unhandled_age_seconds",
            "Age since publication of the oldest published event not yet handled by a worker",
            registry=self.registry,
        )
        self.reconcile_passes = Counter(
            "outbox_reconcile_passes", "Completed reconciliation passes", registry=self.registry
        )
        self.reconcile_seconds = Gauge(
            "outbox_reconcile_pass_seconds",
            "Duration of the last reconciliation pass",
            registry=self.registry,
        )

    def serve(self, *, port: int) -> None:
        """Expose ``/metrics`` on ``port`` (a daemon thread); does nothing for port 0."""
        if port:
            start_http_server(port, registry=self.registry)
