"""Helpers shared by the integration and e2e tests; the servers, the sink and polling are the lab's harness.

The tests run on the same harness as ``signup lab``, ``bench`` and ``soak`` (lab/harness/): one private
redis-server class, one SMTP sink, one pair of polling helpers, one reader of Dramatiq's Redis keys. What
is here is what only the tests need.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.harness.polling import wait_for, wait_until
from lab.harness.processes import free_port, port_open, proc_stats
from lab.harness.queues import QueuedMessages, held_by_workers, held_messages, queued_messages
from lab.harness.redis_server import RedisServer
from lab.harness.smtp import Delivery, SmtpSink

__all__ = [
    "Delivery",
    "QueuedMessages",
    "RedisServer",
    "SmtpSink",
    "free_port",
    "held_by_workers",
    "held_messages",
    "port_open",
    "queued_messages",
    "wait_for",
    "wait_until",
]

IN_CI = bool(os.environ.get("CI"))


def missing_service(reason: str) -> None:
    """Skip on a laptop without the service; fail in CI, where a skipped test would hide a broken set-up."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


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


def start_signup(*args: str, env: dict[str, str], log_dir: Path, new_session: bool = False) -> SignupProcess:
    """Start ``signup ARGS`` (``python -m signup_cli.main``) with ``env`` over the current environment.

    ``new_session`` makes it the leader of a process group of its own, which a test may signal as a whole.
    """
    log_path = log_dir / f"signup-{args[0]}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "signup_cli.main", *args],
            env={**os.environ, **env},
            cwd=repo_root(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    return SignupProcess(process, log_path)
