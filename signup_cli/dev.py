"""``signup dev``: migrate, then api + relay + worker + mailsink in the foreground (DESIGN §8).

Each service is a child process in a session of its own, so that a terminal's Ctrl-C (or a signal to
``signup dev``'s process group) reaches only ``signup dev``, which then stops every service in one way.
Their output is merged into one stream, each line prefixed with the service's name. Ctrl-C or SIGTERM stops
them all: SIGTERM to each service, SIGKILL to each whole process group after ``STOP_TIMEOUT_S``. A child that
exits on its own stops the rest, and ``signup dev`` exits non-zero. On Linux a service also stops when
``signup dev`` is SIGKILLed (``supervise.stop_with_supervisor``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from shared.settings import Settings
from signup_cli.supervise import Child, LogStream

# The mailsink first, so that the worker's first email does not meet a closed port and wait for a retry.
SERVICES = ("mailsink", "api", "relay", "worker")
STOP_TIMEOUT_S = 10.0


def run(settings: Settings, args: argparse.Namespace | None = None) -> int:
    """Run migrate, then every service until a signal or a child's exit; return the exit code."""
    stream = LogStream(sys.stdout)
    env = child_environment(os.environ, tty=stream.colour)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        migrate = Child.start("migrate", signup_argv("migrate"), env=env, stream=stream)
        code = supervise([migrate], stop=stop, stream=stream, until_all_exit=True)
        if code != 0 or stop.is_set():
            return code
        children = [
            Child.start(name, signup_argv(name, *service_args(name, settings)), env=env, stream=stream)
            for name in SERVICES
        ]
        return supervise(children, stop=stop, stream=stream, until_all_exit=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def signup_argv(command: str, *extra: str) -> list[str]:
    """The command line of ``signup COMMAND`` run with this interpreter (works with or without a venv)."""
    return [sys.executable, "-m", "signup_cli.main", command, *extra]


def service_args(name: str, settings: Settings) -> tuple[str, ...]:
    """Extra arguments per service: the mailsink listens where the worker sends."""
    if name == "mailsink":
        return ("--port", str(settings.smtp_port))
    return ()


def child_environment(environ: Mapping[str, str], *, tty: bool) -> dict[str, str]:
    """The children's environment: ours, unbuffered, with development defaults the caller did not set."""
    env = dict(environ)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the merged stream as they are written
    if tty:
        env.setdefault("LOG_FORMAT", "console")  # a person is watching
    return env


def supervise(
    children: Sequence[Child],
    *,
    stop: threading.Event,
    stream: LogStream,
    until_all_exit: bool,
    timeout: float = STOP_TIMEOUT_S,
) -> int:
    """Wait for ``stop`` or for a child to exit, then stop every child and return the exit code.

    With ``until_all_exit`` (one-shot children such as migrate) a child exiting 0 is the expected end;
    otherwise any exit is unexpected and yields a non-zero code.
    """
    while not stop.is_set():
        exited = [child for child in children if child.poll() is not None]
        if exited and not until_all_exit:
            child = exited[0]
            stream.write("dev", f"{child.name} exited unexpectedly with code {child.poll()}; stopping all")
            stop_all(children, stream=stream, timeout=timeout)
            return exited_code(child.poll())
        failed = [child for child in exited if child.poll() != 0]
        if failed or len(exited) == len(children):
            stop_all(children, stream=stream, timeout=timeout)
            return exited_code(failed[0].poll()) if failed else 0
        stop.wait(0.1)
    stream.write("dev", "stopping every service")
    stop_all(children, stream=stream, timeout=timeout)
    return 0


def stop_all(children: Sequence[Child], *, stream: LogStream, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every child, wait up to ``timeout`` seconds, then SIGKILL every process group still there.

    A service is one process that stops itself on SIGTERM. Anything still left in a group after its leader
    has exited has nobody to stop it, so it is killed at once.
    """
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(child.alive() for child in children):
        for child in children:
            if child.poll() is not None:
                child.signal(signal.SIGKILL)  # orphans of an exited leader
        time.sleep(0.05)
    for child in children:
        if child.alive():
            stream.write("dev", f"{child.name} did not stop within {timeout:.0f}s; killing it")
            child.signal(signal.SIGKILL)
        child.reap()


def exited_code(code: int | None) -> int:
    """A child's exit code as ours: never 0 for an unexpected exit (a signal shows as a negative code)."""
    return code if code and code > 0 else 1
