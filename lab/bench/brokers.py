"""Section 11 of ``signup bench``: the broker options side by side, on one private Redis, in one run.

Dramatiq's stock ``RedisBroker`` through its public API (its idle consumers poll every ``worker_timeout``: 50
ms, the poll this project ran with, and Dramatiq's default 1000 ms) against the project's ``StreamsBroker``
(an idle consumer blocks in ``XREADGROUP``). Each runs a Dramatiq ``Worker`` of 8 threads in this process with
an actor that only records when it ran: enqueue → actor latency at a steady rate, Redis commands per second
while idle, and the drain of a backlog enqueued while the worker was paused. What the rest of a signup's
path costs (PostgreSQL, SMTP) is the same whichever broker carries the message, and is left out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from lab.bench.idle import redis_calls
from lab.bench.model import BenchPlan, Section, fmt, ms
from lab.harness.measure import latency_of
from lab.harness.polling import wait_until
from lab.harness.redis_server import RedisServer
from shared.broker import StreamsBroker

OPTIONS = (
    ("Dramatiq RedisBroker, poll 50 ms", "stock", 50),
    ("Dramatiq RedisBroker, poll 1000 ms (its default)", "stock", 1000),
    ("StreamsBroker (this project), blocking read", "streams", 1000),
)
HEADERS = ["broker", "p50 ms", "p95 ms", "p99 ms", "idle Redis cmd/s", "drain msg/s"]
QUEUE = "bench_brokers"
THREADS = 8


def _broker(kind: str, url: str) -> dramatiq.Broker:
    if kind == "stock":
        return RedisBroker(url=url, middleware=[])
    return StreamsBroker(url=url, middleware=[])


def _enqueue_backlog(broker: dramatiq.Broker, messages: list[dramatiq.Message[Any]]) -> None:
    if isinstance(broker, StreamsBroker):  # as the relay does: a batch per script call
        for first in range(0, len(messages), 500):
            broker.enqueue_many([(message, None) for message in messages[first : first + 500]])
    else:
        for message in messages:
            broker.enqueue(message)


class _Run:
    """A broker of one kind with a Dramatiq ``Worker`` whose actor records when each message ran."""

    def __init__(self, kind: str, url: str, timeout_ms: int) -> None:
        self.ran: dict[str, float] = {}
        self.lock = threading.Lock()
        self.broker = _broker(kind, url)
        self.broker.add_middleware(CurrentMessage())
        dramatiq.Actor(
            self._record,
            broker=self.broker,
            actor_name="bench_record",
            queue_name=QUEUE,
            priority=0,
            options={},
        )
        self.worker = Worker(self.broker, worker_timeout=timeout_ms, worker_threads=THREADS)

    def _record(self) -> None:
        message = CurrentMessage.get_current_message()
        with self.lock:
            self.ran[message.message_id if message else "?"] = time.perf_counter()

    def done(self, ids: list[str]) -> bool:
        with self.lock:
            return all(one in self.ran for one in ids)

    def stop(self) -> None:
        self.worker.stop()
        self.broker.close()


def _message() -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=QUEUE, actor_name="bench_record", args=(), kwargs={}, options={})


def _measure(kind: str, timeout_ms: int, url: str, plan: BenchPlan) -> dict[str, Any]:
    """One option: a flushed Redis and a worker for the latency and the idle commands, then a backlog
    enqueued before a second worker starts, drained to the last message."""
    client = redis.Redis.from_url(url)
    client.flushall()
    run = _Run(kind, url, timeout_ms)
    run.worker.start()
    try:
        warm = run.broker.enqueue(_message()).message_id
        wait_until(lambda: run.done([warm]), timeout=30, what="the first message")
        time.sleep(1)  # let the consumers settle into their idle wait
        before = redis_calls(url)
        time.sleep(plan.broker_idle_s)
        idle_per_s = (redis_calls(url) - before) / plan.broker_idle_s
        sent: dict[str, float] = {}
        started = time.perf_counter()
        for n in range(plan.broker_messages):
            time.sleep(max(0.0, started + n / plan.broker_rate - time.perf_counter()))
            at = time.perf_counter()
            sent[run.broker.enqueue(_message()).message_id] = at
        wait_until(lambda: run.done(list(sent)), timeout=60, what="the steady messages")
        latency = latency_of(run.ran[one] - at for one, at in sent.items())
    finally:
        run.stop()
    drain = _Run(kind, url, timeout_ms)
    try:
        backlog = [_message() for _ in range(plan.broker_drain)]
        _enqueue_backlog(drain.broker, backlog)
        ids = [one.message_id for one in backlog]
        drain_started = time.perf_counter()
        drain.worker.start()
        wait_until(lambda: drain.done(ids), timeout=600, what="the backlog")
        drain_s = max(drain.ran[one] for one in ids) - drain_started
    finally:
        drain.stop()
        client.close()
    return {"latency": latency, "idle_per_s": idle_per_s, "drain_per_s": len(ids) / drain_s}


async def brokers_section(plan: BenchPlan) -> Section:
    """Section 11: each broker option's latency, idle cost and drain on one private Redis."""
    server = RedisServer(durable=False)
    server.start()
    try:
        results = []
        for label, kind, timeout_ms in OPTIONS:
            results.append((label, await asyncio.to_thread(_measure, kind, timeout_ms, server.url, plan)))
    finally:
        server.close()
    rows = []
    for label, result in results:
        latency = result["latency"]
        rows.append(
            [
                label,
                ms(latency.p50),
                ms(latency.p95),
                ms(latency.p99),
                f"{result['idle_per_s']:.1f}",
                f"{result['drain_per_s']:.0f}",
            ]
        )
    stock, streams = results[0][1], results[2][1]
    figures = {
        "streams_p50_ms": streams["latency"].p50 * 1000,
        "streams_p99_ms": streams["latency"].p99 * 1000,
        "stock_poll50_p50_ms": stock["latency"].p50 * 1000,
        "streams_idle_redis_per_s": streams["idle_per_s"],
        "stock_poll50_idle_redis_per_s": stock["idle_per_s"],
        "streams_over_stock_drain": streams["drain_per_s"] / stock["drain_per_s"],
    }
    return Section(
        key="brokers",
        title=f"11. Broker options ({plan.broker_messages} messages at {plan.broker_rate:g}/s, "
        f"{plan.broker_idle_s:g} s idle, a backlog of {plan.broker_drain})",
        headers=HEADERS,
        rows=rows,
        figures=figures,
        notes=[
            f"Each option: a Dramatiq Worker of {THREADS} threads in one process, an actor that only records "
            "the time it ran, a private Redis without persistence, flushed between options. Latency: from "
            "the enqueue's call to the actor; idle: every INFO commandstats call over the idle window, the "
            "worker's consumers (queue and delay queue) only; drain: a backlog enqueued before a second "
            "worker starts (the stock broker one enqueue per message, the Streams broker 500 per script "
            "call, as the relay does), from its start to the last message.",
            f"The Streams broker drains {fmt(figures['streams_over_stock_drain'])} times as fast as the "
            "stock broker at a 50 ms poll. The stock broker keeps no locator per message and its dead "
            "letters expire: what reconciliation needs would be in PostgreSQL, at the same cost for every "
            "option.",
        ],
    )
