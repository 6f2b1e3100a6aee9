"""``signup api``: serve ``create_app(settings)`` with uvicorn until SIGTERM or SIGINT, then exit 0."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from types import FrameType

import uvicorn
from litestar import Litestar
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.admin.serve import start_console
from services.api.app import create_app
from services.api.metrics import serve_metrics
from services.api.passwords import keep_hash_memory
from services.api.slow_clients import guarded_protocol
from shared.logging import configure_logging
from shared.settings import Settings
from shared.telemetry import configure_tracing

# How long requests in progress may take to finish after a stop signal: below the 10 s that compose, systemd
# and Kubernetes wait before SIGKILL.
STOP_GRACE_S = 5


def run(
    settings: Settings,
    args: argparse.Namespace | None = None,
    *,
    build_app: Callable[[Settings], Litestar] = create_app,
) -> int:
    keep_hash_memory()  # first: before any thread of ours or uvicorn's allocates
    configure_logging(service="api", log_format=settings.log_format, log_level=settings.log_level)
    configure_tracing(service="api")
    # uvicorn stops gracefully on SIGTERM, then raises it again once the handler it replaced is back, so that
    # the exit status shows the signal: a supervisor would count that as a failure. Exit 0, as on SIGINT.
    signal.signal(signal.SIGTERM, _exit_zero)
    serve_metrics(port=settings.api_metrics_port)
    console = start_console(settings, grace_s=STOP_GRACE_S)  # the operator console's own port, if set
    try:
        _serve(settings, build_app)
    finally:
        if console is not None:
            console.stop()
    return 0


def _serve(settings: Settings, build_app: Callable[[Settings], Litestar]) -> None:
    uvicorn.run(
        build_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        # uvicorn's httptools protocol, wrapped with a deadline on each request's head and the connection
        # cap (services/api/slow_clients.py): uvicorn bounds neither.
        http=guarded_protocol(
            HttpToolsProtocol,
            header_timeout_s=settings.api_header_timeout_ms / 1000,
            max_connections=settings.api_max_connections,
        ),
        log_config=None,  # keep our structlog handlers
        access_log=False,  # tracing_middleware logs each request, without the query string
        server_header=False,
        timeout_graceful_shutdown=STOP_GRACE_S,
    )


def _exit_zero(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
