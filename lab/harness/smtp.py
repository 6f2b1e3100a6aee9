"""The SMTP server the lab and the tests deliver to: aiosmtpd in this process, recording every message.

It records each accepted message with its recipients, ``Message-ID`` and wall-clock receive time, so that
the lab can tell lost, duplicated and late emails apart and a test can read the email itself. It can
refuse: ``script`` holds replies to give instead of accepting, one per attempt ("451 …", "550 …");
``fail_ratio`` answers a random share of attempts with 451 (a transient refusal the worker must retry).

``signup mailsink`` (services/worker/mailsink.py) is another thing: a development server that stores
each message as a file and logs a masked line, with no recording, refusing or test hooks.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from lab.harness.processes import free_port


@dataclass(frozen=True)
class Delivery:
    """One message the sink accepted."""

    recipients: tuple[str, ...]
    """Envelope recipients, lower-cased."""
    message_id: str
    received_at: float
    """Wall-clock time (``time.time()``), comparable with the load generator's commit times."""
    message: Message = field(default_factory=Message, compare=False, repr=False)
    """The parsed email (headers and body)."""


@dataclass
class SmtpSink:
    """An aiosmtpd server on ``host:port``; ``start()`` and ``stop()`` it (it runs in its own thread)."""

    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    fail_ratio: float = 0.0
    script: list[str] = field(default_factory=list)
    received: list[Delivery] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    """Wall-clock time of every DATA command, refused or not."""
    refused: int = 0
    sessions: int = 0
    """EHLOs answered: one per client connection."""
    smtputf8: bool = True
    """Whether EHLO offers SMTPUTF8 (aiosmtpd's default); many real servers do not."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    def start(self) -> None:
        """Listen on ``host:port`` (aiosmtpd runs its own event loop in a thread)."""
        self._controller = Controller(self, hostname=self.host, port=self.port, enable_SMTPUTF8=self.smtputf8)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when no handler hook is defined
        with self._lock:
            self.sessions += 1
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received_at = time.time()  # the data is in: the sink's own parsing below is not the sender's time
        with self._lock:
            self.attempts.append(received_at)
            reply = self.script.pop(0) if self.script else None
            if reply is None and self.fail_ratio and random.random() < self.fail_ratio:
                reply = "451 4.3.0 injected temporary failure"
            if reply is not None:
                self.refused += 1
                return reply
            message = message_from_bytes(envelope.content)
            recipients = tuple(address.lower() for address in envelope.rcpt_tos)
            self.received.append(Delivery(recipients, str(message["Message-ID"]), received_at, message))
        return "250 OK"

    def snapshot(self) -> list[Delivery]:
        """A copy of what was accepted so far."""
        with self._lock:
            return list(self.received)

    def clear(self) -> None:
        """Forget every message and attempt, and stop refusing."""
        with self._lock:
            self.received.clear()
            self.attempts.clear()
            self.script.clear()
            self.fail_ratio, self.refused, self.sessions = 0.0, 0, 0
