"""Driving headless Chromium as a person would: the Chrome DevTools Protocol over ``--remote-debugging-pipe``.

Chromium reads commands from its file descriptor 3 and writes answers and events to 4, each a JSON object
ended by a NUL byte: no websocket, no driver binary, no package beyond the standard library. The page is
used through input events (focus, typed text, a mouse click on the button), never by running script in it,
so its Content-Security-Policy applies to everything it does.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import processes_marked

Event = dict[str, Any]

HEADLESS = (
    "--headless",
    "--no-sandbox",  # the tests run as root in CI's container
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""How the tests run Chromium: headless, quiet, with nothing of its own going on."""


def marker_env(profile: str) -> tuple[str, dict[str, str]]:
    """A variable naming one Chromium run, and the environment to start it with: Chromium's helper
    processes (renderer, zygote, utility) inherit it, so ``stop_marked`` finds every one of them."""
    marker = f"SIGNUP_TEST_CHROMIUM_{Path(profile).name.replace('-', '_')}"
    return marker, {**os.environ, marker: "1"}


def stop_marked(marker: str, *, timeout_s: float = 10) -> None:
    """Kill every process carrying ``marker`` and wait until none is left. Killing only Chromium's main
    process left helpers writing into the profile while it was being removed ("Directory not empty")."""
    deadline = time.monotonic() + timeout_s
    while pids := processes_marked(marker):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Chromium processes {pids} still running after {timeout_s:g} s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_profile(profile: tempfile.TemporaryDirectory[str], *, timeout_s: float = 10) -> None:
    """Remove the profile, first killing any process still naming it on its command line: Chromium's crash
    handler runs detached, without the marker's variable, and can still be writing into it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            profile.cleanup()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        for pid in processes_naming(profile.name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def processes_naming(path: str) -> list[int]:
    """Pids of running processes whose command line mentions ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if path.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _pipe() -> tuple[int, int]:
    """A pipe whose descriptors are 10 or above, clear of the 3 and 4 Chromium's ends are moved to."""
    ends = os.pipe()
    high = tuple(fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, 10) for end in ends)
    for end in ends:
        os.close(end)
    return high[0], high[1]


class Browser:
    """One headless Chromium with one page, driven over the pipe. Use as ``with Browser(path) as page:``."""

    def __init__(self, chromium: str, *, width: int = 720, height: int = 520, timeout_s: float = 30) -> None:
        self.timeout_s = timeout_s
        self.size = (width, height)
        self.events: list[Event] = []
        """Every event the page sent (``method``, ``params``), in order."""
        self._profile = tempfile.TemporaryDirectory(prefix="signup-chromium-")
        chromium_reads, self._commands = _pipe()
        self._answers, chromium_writes = _pipe()
        flags = [
            *HEADLESS,
            "--remote-debugging-pipe",
            f"--window-size={width},{height}",
            f"--user-data-dir={self._profile.name}",
            "about:blank",
        ]
        # Bash (dash takes no descriptor above 9) moves Chromium's ends of the pipes to 3 and 4.
        redirect = f"3<&{chromium_reads} {chromium_reads}<&- 4>&{chromium_writes} {chromium_writes}>&-"
        self._marker, env = marker_env(self._profile.name)
        self._process = subprocess.Popen(
            ["/bin/bash", "-c", f"exec {shlex.join([chromium, *flags])} {redirect}"],
            env=env,
            pass_fds=(chromium_reads, chromium_writes),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(chromium_reads)
        os.close(chromium_writes)
        self._buffer = b""
        self._next_id = 0
        self._session = ""

    def __enter__(self) -> Browser:
        try:
            target = self.command("Target.createTarget", url="about:blank", session=False)["targetId"]
            attached = self.command("Target.attachToTarget", targetId=target, flatten=True, session=False)
            self._session = attached["sessionId"]
            for domain in ("Page", "Network", "Log", "Runtime"):
                self.command(f"{domain}.enable")
            # The page as large as the window, as ``chromium --screenshot --window-size`` renders it.
            self.command(
                "Emulation.setDeviceMetricsOverride",
                width=self.size[0],
                height=self.size[1],
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        stop_marked(self._marker)
        self._process.wait(timeout=10)
        os.close(self._commands)
        os.close(self._answers)
        remove_profile(self._profile)

    def command(self, method: str, *, session: bool = True, **params: Any) -> dict[str, Any]:
        """Send ``method`` with ``params`` to the page (or, ``session=False``, to the browser); its result.

        Raises ``RuntimeError`` for an error answer, ``TimeoutError`` when none comes in time.
        """
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        answer = self._until(lambda event: event.get("id") == self._next_id, what=method)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer["result"]
        return result

    def wait_event(
        self,
        method: str | tuple[str, ...],
        *,
        since: int = 0,
        where: Callable[[Event], bool] = lambda _: True,
    ) -> Event:
        """The first event ``method`` (or one of them) after the first ``since`` events that ``where``
        accepts, waiting for it."""
        methods = (method,) if isinstance(method, str) else method

        def seen() -> Event | None:
            return next((e for e in self.events[since:] if e["method"] in methods and where(e)), None)

        if (found := seen()) is None:
            self._until(lambda _: seen() is not None, what=" or ".join(methods))
            found = seen()
        assert found is not None
        return found

    def _until(self, done: Callable[[Event], bool], *, what: str) -> Event:
        deadline = time.monotonic() + self.timeout_s
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message: Event = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if done(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {what} within {self.timeout_s} s")
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited while waiting for {what}")
            self._buffer += chunk

    # What a person does, and sees.

    def open(self, url: str) -> None:
        """Load ``url`` and wait until the page has loaded."""
        since = len(self.events)
        self.command("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", since=since)

    def html(self) -> str:
        root = self.command("DOM.getDocument")["root"]["nodeId"]
        html: str = self.command("DOM.getOuterHTML", nodeId=root)["outerHTML"]
        return html

    def type_into(self, selector: str, text: str) -> None:
        """Focus the element ``selector`` names and type ``text`` into it."""
        self.command("DOM.focus", nodeId=self._node(selector))
        self.command("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """Press and release the left mouse button in the middle of the element ``selector`` names."""
        quad = self.command("DOM.getBoxModel", nodeId=self._node(selector))["model"]["content"]
        x, y = sum(quad[0::2]) / 4, sum(quad[1::2]) / 4
        for kind in ("mousePressed", "mouseReleased"):
            self.command("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.command("Page.captureScreenshot", format="png")["data"]))

    def _node(self, selector: str) -> int:
        root = self.command("DOM.getDocument")["root"]["nodeId"]
        node: int = self.command("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise LookupError(f"no element matches {selector!r}")
        return node
