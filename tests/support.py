"""Helpers shared by the integration and e2e tests: real servers on free ports, polling with deadlines."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller

from lab.processes import free_port as free_port  # re-exported for the tests
from lab.processes import port_open as port_open
from lab.processes import proc_stats
from lab.sink import SmtpServerLifecycle

T = TypeVar("T")

IN_CI = bool(os.environ.get("CI"))


def missing_service(reason: str) -> None:
    """Skip on a laptop without the service; fail in CI, where a skipped test would hide a broken set-up."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {result!r})")
        await asyncio.sleep(interval)


def wait_until(
    probe: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """The synchronous twin of ``wait_for``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {result!r})")
        time.sleep(interval)


class RedisServer:
    """A private ``redis-server`` on a free port, which a test may stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="signup-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), timeout=10, what=f"redis-server on {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class ReceivedMail:
    envelope_to: list[str]
    message: Message
    received_at: float

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


@dataclass
class SmtpSink(SmtpServerLifecycle):
    """An aiosmtpd server in the test process that records what it accepts.

    ``script`` holds SMTP replies to give instead of accepting, one per attempt ("451 …", "550 …");
    ``fail_ratio`` answers a random share of attempts with 451.
    """

    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    received: list[ReceivedMail] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    fail_ratio: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import random

        with self._lock:
            self.attempts.append(time.monotonic())
            if self.script:
                return self.script.pop(0)
            if self.fail_ratio and random.random() < self.fail_ratio:
                return "451 4.3.0 injected temporary failure"
            self.received.append(
                ReceivedMail(list(envelope.rcpt_tos), message_from_bytes(envelope.content), time.monotonic())
            )
        return "250 OK"

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.attempts.clear()
            self.script.clear()
            self.fail_ratio = 0.0

    def messages_to(self, address: str) -> list[ReceivedMail]:
        with self._lock:
            return [
                mail for mail in self.received if address.lower() in (a.lower() for a in mail.envelope_to)
            ]


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _proc_stats() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, state) of every process, read from /proc."""
    return [(pid, int(f[1]), int(f[2]), f[0]) for pid, f in proc_stats().items()]


def processes_marked(marker: str) -> list[int]:
    """Pids of running processes whose environment holds the variable ``marker`` (children inherit it)."""
    needle = f"{marker}=".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()  # empty for a zombie
        except OSError:
            continue  # exited while we looked
        if any(item.startswith(needle) for item in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def running_in_groups(groups: set[int]) -> list[int]:
    """Pids of processes in ``groups`` that are still running (zombies waiting to be reaped do not count)."""
    return [pid for pid, _, pgid, state in _proc_stats() if pgid in groups and state != "Z"]


@dataclass
class QueuedMessages:
    """The Dramatiq messages held in Redis for one queue: ``ready`` ones and ``delayed`` (``.DQ``) ones."""

    ready: list[Any]
    delayed: list[Any]

    @property
    def all(self) -> list[Any]:
        return self.ready + self.delayed

    def count_by_id(self) -> dict[str, int]:
        """How many copies of each ``message_id`` Redis holds (a duplicate publish shows as 2)."""
        counts: dict[str, int] = {}
        for message in self.all:
            counts[message.message_id] = counts.get(message.message_id, 0) + 1
        return counts


def queued_messages(
    redis_url: str, queue_name: str = "critical", namespace: str = "dramatiq"
) -> QueuedMessages:
    """Read (without consuming) every message a RedisBroker holds for ``queue_name``, decoded.

    Dramatiq keeps each message's body in the hash ``<ns>:<queue>.msgs`` (``.DQ.msgs`` when delayed) until a
    worker acks it; the queue lists only hold ids. Works for any queue; usable from sync and async tests.
    """
    import dramatiq
    import redis

    client = redis.Redis.from_url(redis_url)
    try:

        def read(key: str) -> list[Any]:
            bodies: list[bytes] = client.hvals(key)  # type: ignore[assignment]
            return [dramatiq.Message.decode(body) for body in bodies]

        return QueuedMessages(
            ready=read(f"{namespace}:{queue_name}.msgs"), delayed=read(f"{namespace}:{queue_name}.DQ.msgs")
        )
    finally:
        client.close()


@dataclass
class SignupProcess:
    """A ``signup`` subcommand running as a real process; its stdout and stderr go to ``log_path``."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL if it does not exit within ``timeout``)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise


def start_signup(*args: str, env: dict[str, str], log_dir: Path) -> SignupProcess:
    """Start ``signup ARGS`` (``python -m signup_cli.main``) with ``env`` over the current environment."""
    log_path = log_dir / f"signup-{args[0]}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "signup_cli.main", *args],
            env={**os.environ, **env},
            cwd=repo_root(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return SignupProcess(process, log_path)
