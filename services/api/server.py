"""``signup api``: serve ``create_app(settings)`` with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from services.api.app import create_app
from shared.logging import configure_logging
from shared.settings import Settings
from shared.telemetry import configure_tracing


def run(settings: Settings, args: argparse.Namespace | None = None) -> int:
    configure_logging(service="api", log_format=settings.log_format, log_level=settings.log_level)
    configure_tracing(service="api")
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep our structlog handlers
        access_log=False,  # tracing_middleware logs each request, without the query string
        server_header=False,
    )
    return 0
