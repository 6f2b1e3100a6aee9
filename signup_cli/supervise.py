"""Child processes for ``signup dev``: each in its own process group, their lines merged into one stream."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TextIO

# ANSI colours handed out to services in order; the prefix is only coloured on a terminal.
_COLOURS = ("36", "33", "35", "32", "34", "91", "96")
_PREFIX_WIDTH = 8
# Set in each child's environment to ``signup dev``'s pid; the child then stops when ``signup dev`` dies.
SUPERVISOR_PID = "SIGNUP_DEV_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class LogStream:
    """One output stream shared by every child: whole lines, each prefixed with its service's name."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._colours: dict[str, str] = {}
        self.colour = out.isatty()

    def write(self, name: str, line: str) -> None:
        """Write ``line`` as ``name | line``; a closed stdout (``| head``) is not an error."""
        prefix = f"{name:<{_PREFIX_WIDTH}} |"
        with self._lock:
            if self.colour:
                code = self._colours.setdefault(name, _COLOURS[len(self._colours) % len(_COLOURS)])
                prefix = f"\x1b[{code}m{prefix}\x1b[0m"
            with contextlib.suppress(BrokenPipeError, ValueError):
                self._out.write(f"{prefix} {line}\n")
                self._out.flush()


@dataclass
class Child:
    """A running service: the leader of its own process group, its output pumped by a thread."""

    name: str
    process: subprocess.Popen[bytes]
    reader: threading.Thread

    @classmethod
    def start(cls, name: str, argv: Sequence[str], *, env: Mapping[str, str], stream: LogStream) -> Child:
        """Start ``argv`` in a new session (so a terminal's Ctrl-C reaches only us, and we signal the group).

        Raises ``OSError`` when the program cannot be started.
        """
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, SUPERVISOR_PID: str(os.getpid())},
            start_new_session=True,
        )
        assert process.stdout is not None
        reader = threading.Thread(target=_pump, args=(name, process.stdout, stream), daemon=True)
        reader.start()
        return cls(name=name, process=process, reader=reader)

    @property
    def pgid(self) -> int:
        return self.process.pid  # a session leader's pid is its process group id

    def poll(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        """Whether the leader or any process of its group (anything it started) still exists.

        The group id cannot be reused while a member holds it, so probing it after the leader is gone is safe.
        """
        if self.process.poll() is None:
            return True
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def terminate(self) -> None:
        """Ask the leader to stop (SIGTERM)."""
        if self.process.poll() is None:
            self.process.terminate()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group; a group that is already gone is ignored."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)

    def reap(self) -> None:
        """Collect the leader's exit status and let the reader drain what is left of its output."""
        self.process.wait()
        self.reader.join(timeout=2)


def _pump(name: str, pipe: IO[bytes], stream: LogStream) -> None:
    with pipe:
        for raw in iter(pipe.readline, b""):
            stream.write(name, raw.decode("utf-8", errors="replace").rstrip("\r\n"))


def stop_with_supervisor() -> None:
    """In a child of ``signup dev``: get SIGTERM when ``signup dev`` dies, even of SIGKILL (Linux only).

    A SIGKILLed supervisor cannot stop its children, and each runs in a session of its own, so nothing
    else would. The variable is removed, so that processes this child starts do not act on it. Linux sends
    the signal when the *thread* that forked the child ends, so ``signup dev`` starts its children from its
    main thread.
    """
    supervisor = os.environ.pop(SUPERVISOR_PID, None)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not fatal: SIGINT and SIGTERM to ``signup dev`` still stop everything
    if os.getppid() != int(supervisor):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
