"""``signup dev``'s supervision with small stand-in services: real processes, no servers needed."""

from __future__ import annotations

import io
import sys
import threading

from signup_cli.dev import child_environment, supervise
from signup_cli.supervise import Child, LogStream
from tests.support import running_in_groups, wait_until

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
# Like Dramatiq's CLI: the leader forks a process of its own, which must be stopped too.
FORKER = (
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    " print('ready', flush=True); time.sleep(60)"
)
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True);"
    " time.sleep(60)"
)


def start(out: io.StringIO, **scripts: str) -> list[Child]:
    stream = LogStream(out)
    children = [
        Child.start(name, [sys.executable, "-c", code], env={}, stream=stream)
        for name, code in scripts.items()
    ]
    wait_until(lambda: out.getvalue().count("ready") >= len(scripts), timeout=20, what="children ready")
    return children


def test_a_stop_request_stops_every_group_and_exits_0() -> None:
    out = io.StringIO()
    children = start(out, api=SLEEPER, worker=FORKER)
    groups = {child.pgid for child in children}
    assert len(running_in_groups(groups)) == 3  # api, worker and the worker's own child
    stop = threading.Event()
    stop.set()
    assert supervise(children, stop=stop, stream=LogStream(out), until_all_exit=False) == 0
    assert running_in_groups(groups) == []
    assert "api      | ready" in out.getvalue()
    assert "worker   | ready" in out.getvalue()


def test_a_child_that_dies_stops_the_rest_and_its_code_is_returned() -> None:
    out = io.StringIO()
    stream = LogStream(out)
    children = start(out, api=SLEEPER)
    children.append(
        Child.start("relay", [sys.executable, "-c", "import sys; sys.exit(3)"], env={}, stream=stream)
    )
    groups = {child.pgid for child in children}
    assert supervise(children, stop=threading.Event(), stream=stream, until_all_exit=False) == 3
    assert running_in_groups(groups) == []
    assert "relay exited unexpectedly with code 3" in out.getvalue()


def test_a_clean_exit_of_a_long_running_service_is_still_a_failure() -> None:
    out = io.StringIO()
    stream = LogStream(out)
    children = [Child.start("api", [sys.executable, "-c", "pass"], env={}, stream=stream)]
    assert supervise(children, stop=threading.Event(), stream=stream, until_all_exit=False) == 1


def test_one_shot_children_end_with_their_code() -> None:
    stream = LogStream(io.StringIO())
    ok = [Child.start("migrate", [sys.executable, "-c", "pass"], env={}, stream=stream)]
    assert supervise(ok, stop=threading.Event(), stream=stream, until_all_exit=True) == 0
    bad = [Child.start("migrate", [sys.executable, "-c", "raise SystemExit(4)"], env={}, stream=stream)]
    assert supervise(bad, stop=threading.Event(), stream=stream, until_all_exit=True) == 4


def test_a_child_ignoring_sigterm_is_killed_after_the_timeout() -> None:
    out = io.StringIO()
    children = start(out, worker=STUBBORN)
    stop = threading.Event()
    stop.set()
    assert supervise(children, stop=stop, stream=LogStream(out), until_all_exit=False, timeout=0.5) == 0
    assert running_in_groups({children[0].pgid}) == []
    assert "worker did not stop within" in out.getvalue()


def test_the_children_get_development_defaults_without_overriding_the_callers() -> None:
    env = child_environment({"PATH": "/bin"}, tty=True)
    assert (env["PATH"], env["LOG_FORMAT"], env["PYTHONUNBUFFERED"]) == ("/bin", "console", "1")
    assert child_environment({"LOG_FORMAT": "json"}, tty=True)["LOG_FORMAT"] == "json"
    assert "LOG_FORMAT" not in child_environment({}, tty=False)


def test_lines_are_prefixed_and_coloured_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain, terminal = io.StringIO(), Terminal()
    LogStream(plain).write("relay", "hello")
    LogStream(terminal).write("relay", "hello")
    assert plain.getvalue() == "relay    | hello\n"
    assert terminal.getvalue().startswith("\x1b[") and "relay    |" in terminal.getvalue()
