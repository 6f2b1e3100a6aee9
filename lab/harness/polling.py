"""Polling with a deadline, never a fixed sleep: the lab's readiness waits and the tests' assertions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float,  # noqa: ASYNC109 - the polling deadline; each probe must be allowed to finish
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Await ``probe`` every ``interval`` seconds until it returns something truthy, and return that.

    Raises ``TimeoutError`` (naming ``what`` and the last value) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {result!r})")
        await asyncio.sleep(interval)


def wait_until(
    probe: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """The synchronous twin of ``wait_for``: blocks this thread between calls."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {result!r})")
        time.sleep(interval)
