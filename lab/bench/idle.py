"""Section 8 of ``signup bench``: what an idle worker costs, and the latency of a signup after idle.

For 1 and 4 ``signup worker`` processes, one ``Stack`` (api, relay, worker) sits idle for ``plan.idle_s``:
Redis commands per second (``INFO commandstats``, every command, those run inside the broker's scripts
included) and the workers' CPU (utime + stime of every process in their groups,
from ``/proc/<pid>/stat``) are read before and after each idle window. After each window one signup: its
commit → email time is one sample of the latency after idle; ``plan.idle_samples`` windows, and the cell
reports their median (one sample said more about which process it reached than about the path). With one
process, a steady load at the bench's rate follows (commit → email p50/p95/p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import redis

from lab.bench.e2e import commit_to_email
from lab.bench.model import BenchPlan, Section, ms
from lab.harness.measure import Latency
from lab.harness.processes import Process, proc_stats, signup_process
from lab.harness.stack import Stack

MODES = {"streams, blocking read": "streams"}
PROCESSES = (1, 4)
TICKS = os.sysconf("SC_CLK_TCK")
HEADERS = [
    "consumer",
    "worker processes",
    "idle Redis cmd/s",
    "idle worker CPU %",
    "1 signup after idle ms, median (each)",
]
HEADERS += ["steady p50 ms", "steady p95 ms", "steady p99 ms"]


def redis_calls(url: str) -> int:
    """Commands Redis has run since it started (all of ``INFO commandstats``)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(entry["calls"]) for entry in stats.values())


def group_cpu_s(pgids: set[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes of the process groups ``pgids``."""
    total = sum(int(f[11]) + int(f[12]) for f in proc_stats().values() if int(f[2]) in pgids)
    return total / TICKS


async def _latency(stack: Stack, *, rate: float, duration_s: float, prefix: str) -> Latency:
    return (await commit_to_email(stack, rate=rate, duration_s=duration_s, prefix=prefix))[1]


async def _cell(
    label: str, processes: int, *, rate: float, plan: BenchPlan, work_dir: Path, pg: str
) -> list[str]:
    cell_dir = work_dir / f"idle-{MODES[label]}-{processes}"
    async with (
        Stack(work_dir=cell_dir, pg_admin_url=pg) as stack,
        _more_workers(stack, processes - 1, log_dir=cell_dir) as more,
    ):
        await _latency(stack, rate=1, duration_s=1, prefix="warm")
        pgids = {stack.services["worker"].pid or 0, *(worker.pid or 0 for worker in more)}
        calls = cpu = idle_s = 0.0
        after_idle: list[float] = []
        for n in range(plan.idle_samples):
            calls0, cpu0, began = redis_calls(stack.redis.url), group_cpu_s(pgids), time.monotonic()
            await asyncio.sleep(plan.idle_s)  # the idle window is what is measured
            calls += redis_calls(stack.redis.url) - calls0 - 1  # -1: our INFO
            cpu += group_cpu_s(pgids) - cpu0
            idle_s += time.monotonic() - began
            single = await _latency(stack, rate=1, duration_s=1, prefix=f"single{n}x")
            if single.max is not None:
                after_idle.append(single.max)
        steady = (
            await _latency(stack, rate=rate, duration_s=plan.duration_s, prefix="steady")
            if processes == 1
            else None
        )
    quantiles = [ms(steady.p50), ms(steady.p95), ms(steady.p99)] if steady else ["-"] * 3
    return [
        label,
        str(processes),
        f"{calls / idle_s:.1f}",
        f"{100 * cpu / idle_s:.2f}",
        f"{ms(statistics.median(after_idle))} ({', '.join(ms(v) for v in after_idle)})"
        if after_idle
        else "-",
        *quantiles,
    ]


@contextlib.asynccontextmanager
async def _more_workers(stack: Stack, count: int, *, log_dir: Path) -> AsyncIterator[list[Process]]:
    """``count`` more ``signup worker`` processes beside the stack's own (one process each, DESIGN §6)."""
    workers = []
    for n in range(count):
        (log_dir / f"worker-{n}").mkdir(parents=True, exist_ok=True)
        workers.append(signup_process("worker", env=stack.env, log_dir=log_dir / f"worker-{n}"))
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


async def idle_section(*, rate: float, plan: BenchPlan, work_dir: Path, pg: str) -> Section:
    """Section 8: idle cost and latency."""
    rows = [
        await _cell(label, n, rate=rate, plan=plan, work_dir=work_dir, pg=pg)
        for n in PROCESSES
        for label in MODES
    ]
    figures: dict[str, float | None] = {}
    for row in rows:
        key = f"wake_{row[1]}p"
        figures[f"{key}_idle_redis_per_s"] = float(row[2])
        figures[f"{key}_idle_cpu_pct"] = float(row[3])
        figures[f"{key}_after_idle_ms"] = None if row[4] == "-" else float(row[4].split()[0])
        if row[5] != "-":
            figures[f"{key}_steady_p50_ms"], figures[f"{key}_steady_p99_ms"] = float(row[5]), float(row[7])
    return Section(
        key="idle",
        title=f"8. Idle cost and latency ({plan.idle_s:g} s idle, {rate:g}/s)",
        headers=HEADERS,
        rows=rows,
        figures=figures,
        notes=[
            "Redis commands: every entry of INFO commandstats (commands run inside the broker's scripts "
            "included) over the idle window; worker CPU: utime + stime of the worker's process group from "
            "/proc, as a share of one core.",
            f"After idle: {plan.idle_samples} windows of {plan.idle_s:g} s per cell, one signup after each; "
            "the idle figures cover the windows only.",
            f"Steady: {rate:g} signups/s for {plan.duration_s:g} s after the idle window, one worker "
            "process; latency from the API's post-commit log line to the sink's receipt. "
            "dramatiq_worker_timeout=50 ms.",
            "Targets: p50 ≤ 8 ms, p99 ≤ 25 ms at the steady rate, ≤ 12 ms after idle; idle Redis commands "
            "≤ 12/s and worker CPU ≤ 0.2 % of a core with one process.",
        ],
    )
