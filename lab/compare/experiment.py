"""One cell of the lab: its own stack, a steady load, the scenario's fault, a deadline, then the count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from lab.compare.cells import Cell, Plan
from lab.compare.outcome import Outcome, measure
from lab.harness.database import committed_users, unpublished_rows
from lab.harness.load import Signup, generate_load
from lab.harness.measure import commit_times, usernames_in_log
from lab.harness.queues import held_messages, nothing_pending
from lab.harness.stack import Stack

# Every cell's worker gets the same retry policy; a shorter cap than production's 5 minutes keeps the
# retrying strategies' recoveries inside the cell's deadline.
COMMON_ENV = {"WORKER_THREADS": "4", "WORKER_MAX_BACKOFF_MS": "8000"}
GRACE_S = 3.0
"""After the last signup plus the strategy's delay and commit delay: time for every message's first try."""
REDELIVERY_S = 30.0
"""After a SIGKILL: how long a dead worker's unacked messages may take to come back (DESIGN §5)."""

PROGRESS_EVERY_S = 10.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    outcome: Outcome
    duration_s: float
    settled: bool
    """Whether the system went quiet before the deadline (otherwise it was cut off there)."""


async def run_cell(
    cell: Cell, plan: Plan, *, work_dir: Path, progress: Progress, pg_admin_url: str
) -> CellResult:
    """Start a stack for ``cell``, load it, inject the fault, wait for the emails, count. Cleans up."""
    began = time.monotonic()
    env = {**COMMON_ENV, **cell.strategy.env(), **cell.scenario.env}
    stack = Stack(
        work_dir=work_dir / cell.key.replace("/", "-"),
        strategy=cell.strategy.dispatch,
        env=env,
        services=cell.strategy.services,
        pg_admin_url=pg_admin_url,
    )
    async with stack:
        progress(f"{cell.key}: stack ready, sending {plan.rate:g}/s for {plan.load_s:g} s")
        prefix = cell.strategy.key + "_" + cell.scenario.key
        load = generate_load(stack.api_url, rate=plan.rate, duration_s=plan.load_s, prefix=prefix)
        signups, fault_ended = await asyncio.gather(load, _inject(cell, stack, plan, progress))
        accepted = sum(1 for signup in signups if signup.accepted)
        progress(f"{cell.key}: {len(signups)} sent, {accepted} accepted; waiting for emails")
        settled = await _settle(stack, cell, plan, fault_ended=fault_ended, progress=progress)
        outcome = await _collect(stack, signups)
    progress(
        f"{cell.key}: done in {time.monotonic() - began:.0f} s: {outcome.delivered} emailed, "
        f"{outcome.lost} lost, {outcome.phantom} phantom, {outcome.duplicates} duplicates"
    )
    return CellResult(cell, outcome, time.monotonic() - began, settled)


async def _inject(cell: Cell, stack: Stack, plan: Plan, progress: Progress) -> float:
    """Act out the scenario's fault during the load; returns when (monotonic) the system was whole again."""
    scenario = cell.scenario
    if not (scenario.redis_down_s or scenario.kill_workers):
        return time.monotonic()
    await asyncio.sleep(plan.load_s * scenario.fault_at)  # the experiment's timeline, not a readiness wait
    if scenario.redis_down_s:
        progress(f"{cell.key}: stopping Redis for {scenario.redis_down_s:g} s")
        await asyncio.to_thread(stack.redis.stop)
        await asyncio.sleep(scenario.redis_down_s)
        await asyncio.to_thread(stack.redis.start)
    if scenario.kill_workers:
        progress(f"{cell.key}: SIGKILL {', '.join(n for n in ('relay', 'worker') if n in stack.services)}")
        for name in ("relay", "worker"):
            if name in stack.services:
                stack.kill(name)
        for name in ("relay", "worker"):
            if name in stack.services:
                await stack.restart(name)
    return time.monotonic()


async def _settle(stack: Stack, cell: Cell, plan: Plan, *, fault_ended: float, progress: Progress) -> bool:
    """Wait until nothing is left to deliver (or the deadline); returns whether the system went quiet."""
    load_ended = time.monotonic()
    delay_s = (cell.strategy.delay_ms or 0) / 1000
    commit_s = int(cell.scenario.env.get("FAULT_COMMIT_DELAY_MS", "0")) / 1000
    earliest = load_ended + delay_s + commit_s + GRACE_S
    if cell.scenario.kill_workers:
        earliest = max(earliest, fault_ended + REDELIVERY_S)
    deadline = max(load_ended + plan.settle_s, earliest)
    next_report = load_ended + PROGRESS_EVERY_S
    while time.monotonic() < deadline:
        if time.monotonic() >= earliest and await _quiet(stack):
            return True
        if time.monotonic() >= next_report:
            next_report += PROGRESS_EVERY_S
            progress(f"{cell.key}: {len(stack.sink.snapshot())} emails so far")
        await asyncio.sleep(0.25)
    return False


async def _quiet(stack: Stack) -> bool:
    """No message queued, delayed or held unacknowledged in Redis, and no unpublished outbox row."""
    try:
        if not await asyncio.to_thread(nothing_pending, stack.redis.url):
            return False
    except redis.RedisError:
        return False
    return not await unpublished_rows(stack.database_url)


def _held_in_redis(redis_url: str) -> set[str]:
    """Usernames of every message Redis still holds: queued, delayed, unacknowledged or dead-lettered."""
    payloads = (m.args[0] if m.args else None for found in held_messages(redis_url).values() for m in found)
    return {p["username"] for p in payloads if isinstance(p, dict) and isinstance(p.get("username"), str)}


async def _collect(stack: Stack, signups: list[Signup]) -> Outcome:
    committed = set(await committed_users(stack.database_url))
    worker = stack.services.get("worker")
    return measure(
        signups=signups,
        committed=committed,
        deliveries=stack.sink.snapshot(),
        worker_saw=usernames_in_log(worker.log_lines()) if worker else set(),
        held_in_redis=await asyncio.to_thread(_held_in_redis, stack.redis.url),
        username_of={signup.email.lower(): signup.username for signup in signups},
        committed_at=commit_times(stack.services["api"].log_lines()),
    )
