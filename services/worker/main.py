"""``signup worker``: run the Dramatiq CLI on ``services.worker.entry:setup`` (DESIGN §4, §8).

The process is replaced by Dramatiq's (``exec``), so SIGINT/SIGTERM reach its main process directly, which
hands them to its worker processes: they finish the messages they hold, then stop.
"""

from __future__ import annotations

import argparse
import os
import sys

from shared.messages import registered
from shared.settings import Settings

# An idle Dramatiq consumer sleeps up to this between polls; the default (1000 ms) then dominates
# commit-to-email time. Polling every 50 ms costs Redis almost nothing (DESIGN §4).
DEFAULT_WORKER_TIMEOUT_MS = "50"


def dramatiq_argv(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dramatiq",
        "services.worker.entry:setup",
        "--processes",
        str(settings.worker_processes),
        "--threads",
        str(settings.worker_threads),
        "--queues",
        *sorted({message.queue for message in registered()}),
        "--skip-logging",
    ]


def run(settings: Settings, args: argparse.Namespace | None = None) -> int:
    env = dict(os.environ)
    # Read by Dramatiq at import time, so it must be in the environment of the process we exec.
    env.setdefault("dramatiq_worker_timeout", DEFAULT_WORKER_TIMEOUT_MS)
    argv = dramatiq_argv(settings)
    os.execve(argv[0], argv, env)  # noqa: S606 - argv is ours, no shell involved
    return 0  # pragma: no cover - execve does not return
