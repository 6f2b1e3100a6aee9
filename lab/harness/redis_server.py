"""A private ``redis-server`` on a free port, which an experiment or a test may stop, kill and start again."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from lab.harness.polling import wait_until
from lab.harness.processes import Process, free_port, port_open


class RedisServer(Process):
    """``redis-server`` bound to 127.0.0.1 on a free port, in its own process group; ``url`` is its URL.

    ``durable`` keeps an append-only file fsynced on every write, so that a stop/start (a Redis outage in
    the lab) loses no message Redis acknowledged; without it a restart would drop every queued email and
    blame the strategies. The tests need no persistence and skip the fsyncs. Without ``data_dir`` a
    temporary directory is used, removed by ``close()``.
    """

    def __init__(
        self, *, data_dir: Path | None = None, durable: bool = True, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="signup-redis-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        persistence = (
            ("--appendonly", "yes", "--appendfsync", "always") if durable else ("--appendonly", "no")
        )
        argv = [
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)),
            *("--save", "", *persistence),
        ]
        super().__init__("redis", argv, log_path=self.data_dir / "redis.log")

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> None:
        """Start (replaying the append-only file on a restart) and wait until the port answers.

        Raises ``RuntimeError`` if redis-server exits instead, ``TimeoutError`` after 30 s.
        """
        super().start()
        wait_until(lambda: port_open(self.port) or not self.running, timeout=30, what="redis-server")
        if not self.running:
            raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.log_path}")

    def close(self) -> None:
        """Stop the server and remove its data directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
