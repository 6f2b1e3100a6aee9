"""The processes a soak runs and breaks: ``signup api/relay/worker`` subprocesses and an SMTP sink.

Each service runs in its own process group, so that a SIGKILL reaches every process it forked (a
Dramatiq worker has children), and appends its stdout and stderr to one log file across restarts.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Delivery:
    recipients: tuple[str, ...]
    message_id: str
    received_at: float
    """Wall-clock time (``time.time()``), comparable with the database's timestamps on this machine."""


@dataclass
class MailSink:
    """An aiosmtpd server that records what it accepts and answers 451 to ``fail_ratio`` of attempts."""

    port: int
    fail_ratio: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: int = 0
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.attempts += 1
            if random.random() < self.fail_ratio:
                self.refused += 1
                return "451 4.3.0 injected temporary failure"
            message = message_from_bytes(envelope.content)
            recipients = tuple(address.lower() for address in envelope.rcpt_tos)
            self.deliveries.append(Delivery(recipients, str(message["Message-ID"]), time.time()))
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)


class Service:
    """One ``signup <command>`` subprocess that can be SIGKILLed and started again."""

    def __init__(self, command: str, *, env: dict[str, str], log_dir: Path) -> None:
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{command}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.exited_by_itself: list[int] = []
        """Exit codes of runs that ended before the soak killed or stopped them (a crash, a bad start)."""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "signup_cli.main", self.command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hook, no ack, no rollback of what was sent."""
        self._signal(signal.SIGKILL)

    def stop(self, *, timeout: float = 20) -> None:
        """SIGTERM and wait; SIGKILL whatever is still there after ``timeout`` seconds."""
        self._signal(signal.SIGTERM, timeout=timeout)

    def _signal(self, signum: int, *, timeout: float = 10) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is not None:
            self.exited_by_itself.append(process.returncode)
        try:
            os.killpg(process.pid, signum)
            process.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log_lines(self) -> list[str]:
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()
