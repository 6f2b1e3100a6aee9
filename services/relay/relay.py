"""The claim-publish loop: one transaction per batch, woken by NOTIFY, a poll as the fallback.

A batch is: claim up to ``RELAY_BATCH_SIZE`` due rows and mark them published (one ``UPDATE`` over a
``FOR UPDATE SKIP LOCKED`` select), enqueue them to Redis, commit. If Redis or PostgreSQL fails anywhere in
between, the transaction rolls back (so no row is marked published that was not enqueued), the failure is
counted on the rows in a separate transaction, and the loop backs off and carries on. While batches come
back full, a second lane runs batches beside the first, so that one claims while the other enqueues. A row
enqueued but not committed (a crash between the two) is published again later under the same message id:
at-least-once, never lost.

Every ``RECONCILE_INTERVAL_MS`` a reconciliation pass (``reconcile``, DESIGN §13) publishes again, under the
same message id, the published rows that no worker has handled after ``RECONCILE_GRACE_MS`` and whose
message is nowhere in Redis any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import dramatiq

from services.relay import store
from services.relay.listener import listen_forever
from services.relay.metrics import RelayMetrics
from services.relay.publisher import enqueue_batch
from services.relay.spans import publish_span
from shared.broker import StreamsBroker, create_broker
from shared.database import asyncpg_dsn
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger()

PURGE_INTERVAL_S = 300.0
STATS_INTERVAL_S = 5.0
# Bounds how long a dead or partitioned Redis can hold a batch (and its row locks).
REDIS_SOCKET_TIMEOUT_S = 10.0
PG_COMMAND_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ReconcilePass:
    """What one reconciliation pass did: rows checked, found lost, published again."""

    checked: int
    missing: int
    republished: int


class Relay:
    """Moves committed outbox rows to the broker until ``stop()`` is called."""

    def __init__(
        self,
        *,
        settings: Settings,
        broker: dramatiq.Broker,
        listen: bool = True,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        purge_interval_s: float = PURGE_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.listen = listen
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.purge_interval_s = purge_interval_s
        self.metrics = RelayMetrics()
        self._dsn = asyncpg_dsn(settings.database_url)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pool: Any = None
        self._cursor = store.CURSOR_START

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until ``stop()``. Never raises for an outage of Redis or PostgreSQL: it logs and backs off."""
        await self.connect()
        helpers = [asyncio.create_task(self._every(self.purge_interval_s, self.purge))]
        if self.settings.reconcile_interval_ms:
            helpers.append(
                asyncio.create_task(self._every(self.settings.reconcile_interval_ms / 1000, self.reconcile))
            )
        if self.listen:
            helpers.append(asyncio.create_task(listen_forever(dsn=self._dsn, wake=self._wake)))
        if self.settings.relay_metrics_port:
            helpers.append(asyncio.create_task(self._every(STATS_INTERVAL_S, self.update_backlog)))
        log.info("relay.started", batch_size=self.settings.relay_batch_size, listen=self.listen)
        try:
            await self._loop()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.close()
            log.info("relay.stopped")

    async def connect(self, **pool_options: Any) -> None:
        """Open the PostgreSQL pool (``run`` does; the bench and tests call a single pass after it)."""
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=4,
            command_timeout=PG_COMMAND_TIMEOUT_S,
            timeout=PG_CONNECT_TIMEOUT_S,
            # Every claim planned for the table as it is now: a generic plan made while the outbox was
            # empty read the whole table per batch once a backlog came (DESIGN §5).
            server_settings={"application_name": "signup-relay", "plan_cache_mode": "force_custom_plan"},
            **pool_options,
        )

    async def close(self) -> None:
        """Close the pool and the broker."""
        await self._pool.close()
        self.broker.close()

    async def _loop(self) -> None:
        failures = 0
        poll_s = self.settings.relay_poll_interval_ms / 1000
        second: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    published = await self.publish_batch()
                except Exception:
                    failures += 1
                    await self._sleep(self._backoff(failures))
                    continue
                failures = 0
                if published == self.settings.relay_batch_size:
                    if second is None or second.done():
                        second = asyncio.create_task(self._second_lane())
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll_s)
        finally:
            if second is not None:
                await second

    async def _second_lane(self) -> None:
        """Batches in a second transaction while a backlog lasts: one lane's claim runs in PostgreSQL while
        the other's enqueue runs here and in Redis. It stops at the first short or failed batch (the first
        lane backs off); SKIP LOCKED keeps the lanes off each other's rows, as it does for several relays."""
        with contextlib.suppress(Exception):
            while not self._stopping.is_set():
                if await self.publish_batch() < self.settings.relay_batch_size:
                    return

    async def publish_batch(self) -> int:
        """Claim and mark, enqueue, commit: one batch in one transaction; return how many rows it published.

        Raises whatever Redis or PostgreSQL raised, after the rollback and after counting the attempt.
        """
        rows: list[store.OutboxRow] = []
        started = time.perf_counter()
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                rows = await store.claim(
                    connection,
                    limit=self.settings.relay_batch_size,
                    lookahead_ms=self.settings.relay_lookahead_ms,
                )
                if rows:
                    with publish_span(rows):
                        # redis-py is synchronous: keep the event loop (and the NOTIFY listener) running.
                        await asyncio.shield(asyncio.to_thread(enqueue_batch, self.broker, rows))
        except Exception as exc:
            await self._failed(rows, exc)
            raise
        if rows:
            self._published(rows, started)
        return len(rows)

    def _published(self, rows: list[store.OutboxRow], started: float) -> None:
        self.metrics.published.inc(len(rows))
        # One line per row at info: a signup's trace id must be findable in every service's log at the
        # default level (DESIGN §9); the batch line below carries the timing.
        for row in rows:
            log.info("relay.event_published", request_id=row.trace_id, event_id=str(row.event_id))
        log.info(
            "relay.batch_published",
            count=len(rows),
            first_id=rows[0].id,
            last_id=rows[-1].id,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _failed(self, rows: list[store.OutboxRow], exc: Exception) -> None:
        self.metrics.errors.inc()
        ids = [row.id for row in rows]
        log.error(
            "relay.publish_failed",
            count=len(rows),
            first_id=ids[0] if ids else None,
            last_id=ids[-1] if ids else None,
            error=repr(exc),
        )
        if not ids:
            return
        try:
            async with self._pool.acquire() as connection:
                await store.record_failure(connection, ids=ids, error=repr(exc))
        except Exception as record_exc:
            log.warning("relay.record_failure_failed", count=len(ids), error=repr(record_exc))

    async def purge(self) -> int:
        """Delete handled rows published more than ``OUTBOX_RETENTION_HOURS`` ago, and dead letters older
        than ``DEAD_LETTER_RETENTION_HOURS``; return how many rows went."""
        async with self._pool.acquire() as connection:
            deleted = await store.purge(connection, older_than_hours=self.settings.outbox_retention_hours)
        if deleted:
            log.info("relay.purged", count=deleted)
        if isinstance(self.broker, StreamsBroker):
            retention_ms = self.settings.dead_letter_retention_hours * 3_600_000
            dead = await asyncio.to_thread(self.broker.purge_dead_letters, older_than_ms=retention_ms)
            if dead:
                log.info("relay.dead_letters_purged", count=dead)
        return deleted

    async def update_backlog(self) -> None:
        """Refresh the backlog gauges."""
        async with self._pool.acquire() as connection:
            size, age = await store.backlog(connection)
            unhandled_age = await store.unhandled_age(connection)
        self.metrics.backlog.set(size)
        self.metrics.oldest_age.set(age)
        self.metrics.oldest_unhandled_age.set(unhandled_age)

    async def reconcile(self) -> ReconcilePass:
        """One reconciliation pass: publish again the unhandled rows whose message Redis lost.

        Reads up to ``RECONCILE_BATCH_SIZE`` candidates after the cursor (one query), asks Redis where each
        message is (one script call); only if some are missing: one transaction that re-checks and marks
        them under their row locks and enqueues them in one MULTI/EXEC. Raises Redis's or PostgreSQL's errors
        (the periodic runner logs them); nothing is marked unless it was enqueued.
        """
        started = time.perf_counter()
        limit = self.settings.reconcile_batch_size
        grace_ms = self.settings.reconcile_grace_ms
        async with self._pool.acquire() as connection:
            found = await store.candidates(connection, after=self._cursor, grace_ms=grace_ms, limit=limit)
        # A short page means the end of the unhandled rows: the next pass starts again from the oldest.
        self._cursor = (found[-1].published_at, found[-1].id) if len(found) == limit else store.CURSOR_START
        present = await asyncio.to_thread(self._locate, [str(c.event_id) for c in found])
        missing = [c.id for c, here in zip(found, present, strict=True) if not here]
        rows: list[store.OutboxRow] = []
        if missing:
            async with self._pool.acquire() as connection, connection.transaction():
                rows = await store.mark_republished(connection, ids=missing, grace_ms=grace_ms)
                if rows:
                    await asyncio.shield(asyncio.to_thread(enqueue_batch, self.broker, rows))
            self._republished(rows)
        self.metrics.reconcile_seconds.set(time.perf_counter() - started)
        self.metrics.reconcile_passes.inc()
        return ReconcilePass(checked=len(found), missing=len(missing), republished=len(rows))

    def rewind(self) -> None:
        """Make the next reconciliation pass start from the oldest unhandled row (the bench's repeats)."""
        self._cursor = store.CURSOR_START

    def _locate(self, event_ids: list[str]) -> list[bool]:
        if not isinstance(self.broker, StreamsBroker):  # another broker keeps no locators
            return [True] * len(event_ids)
        return self.broker.locate(event_ids)

    def _republished(self, rows: list[store.OutboxRow]) -> None:
        self.metrics.republished.inc(len(rows))
        for row in rows:
            log.warning(
                "relay.event_republished",
                request_id=row.trace_id,
                event_id=str(row.event_id),
                actor=row.actor,
                reason="message not in Redis",
            )

    async def _every(self, interval_s: float, job: Any) -> None:
        while True:
            try:
                await job()
            except Exception as exc:
                log.warning("relay.periodic_job_failed", job=job.__name__, error=repr(exc))
            await asyncio.sleep(interval_s)

    def _backoff(self, failures: int) -> float:
        # Exponential, capped, with jitter so that several relays do not retry in lockstep.
        delay: float = min(self.max_backoff_s, self.min_backoff_s * 2 ** min(failures - 1, 30))
        return delay / 2 + random.uniform(0, delay / 2)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def build_relay(settings: Settings, **options: Any) -> Relay:
    """The relay for ``settings``, with its own broker; ``options`` go to ``Relay`` (tests use them).

    Nothing connects until ``run()``.
    """
    broker = create_broker(settings, socket_timeout=REDIS_SOCKET_TIMEOUT_S)
    return Relay(settings=settings, broker=broker, **options)
