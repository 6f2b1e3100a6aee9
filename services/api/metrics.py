"""The API's Prometheus metrics, served on a port of their own (``API_METRICS_PORT``), never the public one.

Some labels describe what a request did (``resend_requests_total{outcome}`` says whether an address is
unknown, verified or rate-limited): read by anyone on the API port, they would tell who has an account.
Like the relay's and the worker's, the endpoint is for the scraper on the private network: compose does not
publish it.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, start_http_server

from shared.logging import get_logger

log = get_logger()


def serve_metrics(*, port: int, host: str = "0.0.0.0") -> int | None:  # noqa: S104 - a container's port
    """Serve the process's default registry as ``/metrics`` on ``host:port`` (a daemon thread); None for
    port 0 or a port already taken (logged: the API serves without its metrics rather than not at all)."""
    if port == 0:
        return None
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        log.warning("metrics port unavailable", port=port, error=exc.strerror)
        return None
    log.info("metrics endpoint", port=port)
    return port
