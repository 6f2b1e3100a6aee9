"""Bounded admission for signups: take only what can be finished within a deadline, refuse the rest at once.

A signup costs tens of milliseconds of CPU (the argon2id hash), so a flood larger than the machine can hash
would otherwise queue without bound: every answer late, clients timing out, and signups committing for
clients that have gone. ``Admission`` lets ``concurrency`` signups hash at once and up to ``max_waiting``
wait; a signup that finds the wait queue full, or that waited longer than ``max_wait_s``, is ``Shed`` before
any work (the API answers ``503`` + ``Retry-After``). ``max_waiting`` follows the measured service time, so
the queue holds about what the working slots can finish within half of ``max_wait_s``. Other endpoints
never wait here.

A signup takes its place in the queue once its body is in (``Admission.enter``, called by the route): a
client slow to send its body holds no place meanwhile, so a few of them cannot make the API refuse everyone
else (the body's own deadline is ``API_BODY_TIMEOUT_MS``, services/api/slow_clients.py). A refusal does no
database work, not even the look-up of a retry's ``Idempotency-Key``. Every refusal is
counted by reason (``signup_api_shed_total``) and logged at most once a second per reason with the exact
count since the last line (``ShedLog``): a line per refusal costs real CPU in a flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from litestar.types import Receive
from prometheus_client import Counter, Gauge, Histogram

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger()

ShedReason = Literal["queue_full", "queue_timeout", "deadline", "client_gone"]

ADMITTED = Counter("signup_api_admitted_total", "Signups admitted to work")
SHED = Counter("signup_api_shed_total", "Signups refused with 503 before they committed", ["reason"])
IN_FLIGHT = Gauge("signup_api_signups_in_flight", "Signups holding a hashing slot now")
QUEUE_WAIT = Histogram(
    "signup_api_queue_wait_seconds",
    "How long an admitted signup waited for a working slot",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
)

# Until a signup has been measured: about one argon2id hash plus a transaction on a slow core.
_INITIAL_SERVICE_S = 0.15
# The queue is sized for half of ``max_wait_s`` at the measured pace: the pace is an average, and a signup
# that outwaits ``max_wait_s`` is refused only after that wait (slow), while one over the queue's bound is
# refused at once (fast). The headroom keeps nearly every refusal a fast one.
QUEUE_HEADROOM = 0.5
_EWMA_WEIGHT = 0.2
SHED_LOG_INTERVAL_S = 1.0
SHED_MESSAGE = "too many signups at once, retry later"


class Shed(Exception):
    """The signup was refused before it committed; nothing of it was written (503 + ``Retry-After``)."""

    def __init__(self, reason: ShedReason, *, retry_after_s: int) -> None:
        super().__init__(f"signup shed: {reason}")
        self.reason = reason
        self.retry_after_s = retry_after_s


class Place:
    """A signup's place in the wait queue, from its body's arrival until it gets a slot or leaves."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.arrived = time.monotonic()
        self._held = True

    def leave(self) -> None:
        """Give the place up (once; later calls do nothing)."""
        if self._held:
            self._held = False
            self.admission._waiting -= 1


@dataclass
class Ticket:
    """One signup's way through admission: ``hashing()`` holds a slot, ``check()`` guards the commit."""

    admission: Admission
    deadline: float
    client_gone: asyncio.Event
    place: Place | None = None
    """Taken by the route; without one, ``hashing()`` queues (or is refused) on its own."""

    def hashing(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for a hashing slot and hold it for the block; raises ``Shed`` when the signup is refused."""
        return self.admission.slot(client_gone=self.client_gone, place=self.place)

    def check(self) -> None:
        """Raise ``Shed`` if the answer could no longer reach a waiting client in time."""
        if self.client_gone.is_set():
            raise _shed("client_gone", self.admission.retry_after_s())
        if time.monotonic() > self.deadline:
            raise _shed("deadline", self.admission.retry_after_s())


class Admission:
    """At most ``concurrency`` signups hashing and a short wait queue in front of them (module doc).

    Only the hash holds a slot: it is the CPU a signup needs. Its transaction waits on the database, which
    the connection pool bounds, so a slow commit does not make the API refuse signups it could hash.
    """

    def __init__(
        self, *, concurrency: int, max_wait_s: float, deadline_s: float, max_waiting: int = 0
    ) -> None:
        self.concurrency = concurrency
        self.max_wait_s = max_wait_s
        self.deadline_s = deadline_s
        self._fixed_max_waiting = max_waiting
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0
        self.service_s = _INITIAL_SERVICE_S
        """A moving average of how long a signup holds its slot (one hash)."""

    @property
    def max_waiting(self) -> int:
        """How many may wait: the setting, or what the slots finish in half of ``max_wait_s``, measured."""
        if self._fixed_max_waiting:
            return self._fixed_max_waiting
        return max(1, math.floor(QUEUE_HEADROOM * self.concurrency * self.max_wait_s / self.service_s))

    def retry_after_s(self) -> int:
        """Seconds until the queue in front of a new signup has likely drained (at least 1)."""
        backlog_s = (self._waiting + self.concurrency) * self.service_s / self.concurrency
        return max(1, math.ceil(backlog_s))

    def enter(self) -> Place:
        """A place in the wait queue for a signup arriving now; raises ``Shed`` if the queue is full."""
        place = self.try_enter()
        if place is None:
            raise self.refuse("queue_full")
        return place

    def try_enter(self) -> Place | None:
        """A place in the wait queue for a signup arriving now, or None (nothing counted) if it is full."""
        if self._slots.locked() and self._waiting >= self.max_waiting:
            return None
        self._waiting += 1
        return Place(self)

    def refuse(self, reason: ShedReason) -> Shed:
        """The refusal of a signup, counted and logged (``SHED``, ``SHED_LOG``), to raise or answer."""
        return _shed(reason, self.retry_after_s())

    def ticket(self, *, client_gone: asyncio.Event, place: Place | None = None) -> Ticket:
        """A signup's ticket: its deadline runs from its place's arrival in the queue, or from now."""
        arrived = place.arrived if place is not None else time.monotonic()
        return Ticket(self, arrived + self.deadline_s, client_gone, place)

    @contextlib.asynccontextmanager
    async def slot(self, *, client_gone: asyncio.Event, place: Place | None = None) -> AsyncIterator[None]:
        """Wait for a slot and hold it for the block; raises ``Shed`` when the signup is refused.

        ``place`` is the queue place taken by the route; without one, the signup takes one now (``enter``).
        """
        if place is None:
            place = self.enter()
        try:
            await _acquire(self._slots, timeout_s=self.max_wait_s, client_gone=client_gone)
        except TimeoutError:
            raise _shed("queue_timeout", self.retry_after_s()) from None
        except _ClientGone:
            raise _shed("client_gone", self.retry_after_s()) from None
        finally:
            place.leave()
        started = time.monotonic()
        ADMITTED.inc()
        QUEUE_WAIT.observe(started - place.arrived)
        IN_FLIGHT.inc()
        try:
            yield
        finally:
            IN_FLIGHT.dec()
            self._slots.release()
            took = time.monotonic() - started
            self.service_s += _EWMA_WEIGHT * (took - self.service_s)


class _ClientGone(Exception):
    pass


class ShedLog:
    """Logs refusals at most once per ``interval_s`` per reason, each line with the exact count since the
    last one: the first refusal after a quiet interval at once, the rest when the interval is over (a timer
    on the running loop), whatever is left by ``flush()`` (the API's shutdown). The counts add up to
    ``signup_api_shed_total``."""

    def __init__(self, interval_s: float = SHED_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._pending: dict[ShedReason, int] = {}
        self._logged_at: dict[ShedReason, float] = {}
        self._timers: dict[ShedReason, asyncio.TimerHandle] = {}

    def note(self, reason: ShedReason) -> None:
        """Count one refusal for ``reason``; log now if no line for it was written within the interval."""
        self._pending[reason] = self._pending.get(reason, 0) + 1
        wait_s = self._logged_at.get(reason, -math.inf) + self.interval_s - time.monotonic()
        if wait_s <= 0:
            self._write(reason)
            return
        timer = self._timers.get(reason)
        if timer is not None and not timer.cancelled() and timer.when() >= _loop_time():
            return  # a line for this reason is due already
        try:
            self._timers[reason] = asyncio.get_running_loop().call_later(wait_s, self._write, reason)
        except RuntimeError:  # no event loop here (a test calling in directly): never keep a count unlogged
            self._write(reason)

    def flush(self) -> None:
        """Log every count not logged yet."""
        for reason in list(self._pending):
            self._write(reason)

    def _write(self, reason: ShedReason) -> None:
        timer = self._timers.pop(reason, None)
        if timer is not None:
            timer.cancel()
        count = self._pending.pop(reason, 0)
        if count:
            self._logged_at[reason] = time.monotonic()
            log.info("signups shed", reason=reason, count=count)


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return math.inf


SHED_LOG = ShedLog()
"""The process's refusals, as ``SHED`` counts them."""


def _shed(reason: ShedReason, retry_after_s: int) -> Shed:
    SHED.labels(reason=reason).inc()
    SHED_LOG.note(reason)
    return Shed(reason, retry_after_s=retry_after_s)


async def _acquire(slots: asyncio.Semaphore, *, timeout_s: float, client_gone: asyncio.Event) -> None:
    """Acquire ``slots`` within ``timeout_s``; raise ``_ClientGone`` if the client leaves first."""
    if not slots.locked():
        await slots.acquire()
        return
    acquire = asyncio.ensure_future(slots.acquire())
    gone = asyncio.ensure_future(client_gone.wait())
    try:
        done, _ = await asyncio.wait({acquire, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if acquire in done:
        return
    if not acquire.cancel():  # it acquired as we gave up: hand the slot back
        slots.release()
    raise _ClientGone if gone in done else TimeoutError


@contextlib.asynccontextmanager
async def watch_client(receive: Receive) -> AsyncIterator[asyncio.Event]:
    """An event set when the client disconnects, for a request whose body has been read already.

    Once the body is read, the ASGI server answers ``receive()`` only when the client goes away.
    """
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        watcher.cancel()


def build_admission(settings: Settings) -> Admission:
    """The admission of ``settings``: ``API_SIGNUP_CONCURRENCY`` (0: one per CPU this process may use)."""
    concurrency = settings.api_signup_concurrency or len(os.sched_getaffinity(0))
    return Admission(
        concurrency=concurrency,
        max_wait_s=settings.api_signup_max_wait_ms / 1000,
        deadline_s=settings.api_signup_deadline_ms / 1000,
        max_waiting=settings.api_signup_max_waiting,
    )
