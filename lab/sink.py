"""The SMTP server an experiment delivers to: aiosmtpd in the harness process, recording every message.

It records each accepted message's recipients, ``Message-ID`` and wall-clock receive time, so that the
lab can tell lost, duplicated and late emails apart. ``fail_ratio`` answers that share of attempts with a
451 (a transient refusal the worker must retry).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Delivery:
    """One message the sink accepted."""

    recipients: tuple[str, ...]
    """Envelope recipients, lower-cased."""
    message_id: str
    received_at: float
    """Wall-clock time (``time.time()``), comparable with the load generator's commit times."""


class SmtpServerLifecycle:
    """``start()``/``stop()`` for an aiosmtpd handler that has ``host``, ``port`` and ``_controller``.

    Shared by this sink and the tests' scriptable one (tests/support.py), which record different things.
    """

    host: str
    port: int
    _controller: Controller | None

    def start(self) -> None:
        """Listen on ``host:port`` (aiosmtpd runs its own event loop in a thread)."""
        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass
class MailSink(SmtpServerLifecycle):
    """An aiosmtpd server on ``port`` that accepts everything except ``fail_ratio`` of the attempts."""

    port: int
    host: str = "127.0.0.1"
    fail_ratio: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: int = 0
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.attempts += 1
            if self.fail_ratio and random.random() < self.fail_ratio:
                self.refused += 1
                return "451 4.3.0 injected temporary failure"
            message = message_from_bytes(envelope.content)
            recipients = tuple(address.lower() for address in envelope.rcpt_tos)
            self.deliveries.append(Delivery(recipients, str(message["Message-ID"]), time.time()))
        return "250 OK"

    def snapshot(self) -> list[Delivery]:
        """A copy of what was accepted so far."""
        with self._lock:
            return list(self.deliveries)
