"""Serving the console beside the API: its own uvicorn server on ``CONSOLE_HOST:CONSOLE_PORT``, in a
thread of the ``signup api`` process (the public server keeps the main thread and the signal handlers)."""

from __future__ import annotations

import threading

import uvicorn

from services.admin.app import create_console
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger()


class ConsoleServer:
    """The console's server thread; ``stop()`` ends it (within ``grace_s`` for requests in progress)."""

    def __init__(self, settings: Settings, *, grace_s: int) -> None:
        app = create_console(settings)
        assert app is not None
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.console_host,
                port=settings.console_port,
                loop="uvloop",
                http="httptools",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=grace_s,
            )
        )
        self.grace_s = grace_s
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("console.started", port=self.server.config.port)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.grace_s + 5)


def start_console(settings: Settings, *, grace_s: int) -> ConsoleServer | None:
    """Start the console when ``CONSOLE_OPERATORS`` is set; None (and no port opened) otherwise."""
    if not settings.console_operators.strip():
        return None
    server = ConsoleServer(settings, grace_s=grace_s)
    server.start()
    return server
