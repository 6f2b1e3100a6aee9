"""``signup relay``: run ``build_relay(settings)`` until SIGTERM or SIGINT, then exit 0."""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop

from services.relay.relay import build_relay
from shared.logging import configure_logging
from shared.settings import Settings
from shared.telemetry import configure_tracing


def run(settings: Settings, args: argparse.Namespace | None = None) -> int:
    configure_logging(service="relay", log_format=settings.log_format, log_level=settings.log_level)
    # The relay's own SQL (a claim every poll) belongs to no signup: its spans would be noise.
    configure_tracing(service="relay", sql=False)
    uvloop.run(_serve(settings))
    return 0


async def _serve(settings: Settings) -> None:
    relay = build_relay(settings)
    loop = asyncio.get_running_loop()
    # A signal lets the batch in hand finish (or roll back) before the process exits.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.stop)
    relay.metrics.serve(port=settings.relay_metrics_port)
    await relay.run()
