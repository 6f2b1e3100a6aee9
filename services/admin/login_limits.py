"""How many failed console logins a client address, and an operator name, may have in a minute (DESIGN §14).

Each failure counts against both the address the request came from and the name it typed (whether or not an
operator has that name: the answer says nothing of which exist). Once either has ``FAILURES`` failures in
the last ``WINDOW_S`` seconds, a login is answered 429 with ``Retry-After`` without its password being
checked, until the oldest of them is older than the window. Kept in the console's memory: a console restart
forgets them. Names are kept as SHA-256 digests (a password typed into the name field stays nowhere), and at
most ``MAX_KEYS`` keys are kept.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque

FAILURES = 5
WINDOW_S = 60.0
MAX_KEYS = 10_000


class LoginLimiter:
    """Failed logins per key in a sliding window; ``now`` (monotonic seconds) is for tests."""

    def __init__(
        self, *, failures: int = FAILURES, window_s: float = WINDOW_S, max_keys: int = MAX_KEYS
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._failed: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        """How many keys are kept."""
        return len(self._failed)

    @staticmethod
    def keys(address: str, name: str) -> tuple[str, str]:
        """The keys a login from ``address`` typing ``name`` counts against."""
        return f"address:{address}", "name:" + hashlib.sha256(name[:100].encode()).hexdigest()

    def retry_after(self, keys: tuple[str, ...], *, now: float | None = None) -> int:
        """Seconds until a login with ``keys`` may be tried again; 0 when it may be now."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.failures:
                wait = max(wait, times[-self.failures] + self.window_s - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, keys: tuple[str, ...], *, now: float | None = None) -> None:
        """Count one failed login against each of ``keys``."""
        now = time.monotonic() if now is None else now
        for key in keys:
            times = self._recent(key, now)
            if key not in self._failed:
                if len(self._failed) >= self.max_keys:
                    self._forget(now)
                self._failed[key] = times
            times.append(now)
            while len(times) > self.failures:
                times.popleft()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failed.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def _forget(self, now: float) -> None:
        """Drop the keys without a failure in the window; if none, the one whose last failure is oldest."""
        for key in [key for key, times in self._failed.items() if not self._recent(key, now)]:
            del self._failed[key]
        if len(self._failed) >= self.max_keys:
            del self._failed[min(self._failed, key=lambda key: self._failed[key][-1])]
