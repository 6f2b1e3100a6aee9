"""The one launcher of the project's processes, and ports.

``Process`` starts, stops, kills and restarts a command (the ``signup`` services, redis-server) for the lab,
the bench, the soak and the tests alike; ``signup_process`` builds the one for a ``signup`` subcommand. Each
runs in its own process group (``start_new_session``), so that a signal reaches every process it forked and
nothing outlives the experiment or the test; ``run_stoppable`` runs an experiment so that SIGINT and
SIGTERM stop it through that clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port nobody listens on right now, below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` is in the range it also takes the source ports of outgoing
    connections from: between our check and the server's bind, a connection of the worker or the relay
    could take it (seen once as ``EADDRINUSE`` for the SMTP sink). Below the range only another listener
    can, and a random pick makes two of ours choosing the same port unlikely.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(PORTS_FROM, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port found between {PORTS_FROM} and {low}")


PORTS_FROM = 15000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768, its default, elsewhere)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low if low > PORTS_FROM + 1000 else 32768


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` (within 0.2 s)."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def proc_stats() -> dict[int, list[str]]:
    """pid → the fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, …, utime, stime …)
    of every process: ``proc_stats()[pid][2]`` is its process group."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name may hold spaces and parentheses: the fields after its last ")" are fixed.
        stats[int(entry.name)] = text[text.rindex(")") + 2 :].split()
    return stats


class Process:
    """One command in its own process group, its stdout and stderr appended to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        """Wall-clock time of the latest start."""
        self.log_offset = 0
        """Size of the log file at the latest start: what this run wrote begins there."""
        self.crashes: list[int] = []
        """Exit codes of runs that ended before we stopped or killed them."""
        self.returncode: int | None = None
        """Exit code of the latest run, once it has ended and been waited for."""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the command (again); earlier runs' output stays at the top of the log."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.started_at = time.time()
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the whole group: no shutdown hook runs, nothing is acknowledged or rolled back."""
        self._signal(signal.SIGKILL)

    def stop(self, *, timeout: float = 15) -> int | None:
        """SIGTERM the main process only and wait; SIGKILL the group after ``timeout`` seconds. Returns the
        exit code (None if it was not running).

        Only the main process: it stops its own children (a second SIGTERM sent to the whole group could
        reach a child in the middle of its own shutdown).
        """
        return self._signal(signal.SIGTERM, timeout=timeout, group=False)

    def wait(self, timeout: float) -> int:
        """Wait for the running process to exit by itself and return its exit code; raises
        ``subprocess.TimeoutExpired`` after ``timeout`` seconds, leaving it running."""
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        self.returncode = self._process.wait(timeout=timeout)
        return self.returncode

    def _signal(self, signum: int, *, timeout: float = 10, group: bool = True) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is not None:
            self.crashes.append(process.returncode)
        try:
            if group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
            process.wait(timeout=timeout)
        except ProcessLookupError:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # A child that ignored the group's SIGTERM (or was forked late) must not outlive the run.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self.returncode = process.returncode
        return self.returncode

    def output(self) -> str:
        """Everything logged, across restarts."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[str]:
        """Every line logged, across restarts."""
        return self.output().splitlines()

    def logged_since_start(self) -> bool:
        return self.log_path.exists() and self.log_path.stat().st_size > self.log_offset


def signup_process(
    command: str,
    *args: str,
    env: dict[str, str],
    log_dir: Path,
    lab: bool = False,
    log_name: str = "",
    cwd: Path | None = None,
) -> Process:
    """``signup <command> <args>`` run with this interpreter, so it uses the same installed code, logging to
    ``log_dir/<log_name or command>.log``; with ``lab``, ``python -m lab.strategies <command>`` (the API or
    the worker with the lab's knobs)."""
    argv = [sys.executable, "-m", "lab.strategies" if lab else "signup_cli.main", command, *args]
    return Process(command, argv, log_path=log_dir / f"{log_name or command}.log", env=env, cwd=cwd)


def run_signup(
    *args: str, env: dict[str, str], timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``signup ARGS`` run to its end with this interpreter, as ``signup_process`` starts it, its output
    captured: for the commands that end by themselves (``dlq``, ``trace``, ``lab``, ``bench``). Raises
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    argv = [sys.executable, "-m", "signup_cli.main", *args]
    return subprocess.run(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where SIGINT and SIGTERM cancel ``main``: every stack's clean-up still runs, so
    no process or database of the run is left behind. Python's default SIGTERM would exit at once, and a
    job a shell starts in the background ignores SIGINT. Raises ``asyncio.CancelledError`` when stopped."""

    async def stoppable() -> T:
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        return await main

    return asyncio.run(stoppable())
