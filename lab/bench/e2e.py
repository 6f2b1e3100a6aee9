"""Sections 1 and 2 of ``signup bench``: commit → email latency per strategy; the API's cost of the outbox.

Both run real ``signup`` processes on a ``lab.harness.stack.Stack`` each (fresh database, private Redis,
SMTP sink) and drive them with ``lab.harness.load.generate_load``. The hashing bound (cores ÷ the time of
one argon2id hash with the API's own hasher) is measured in this process, in the same run, so every figure
is a ratio to something measured on the same loaded machine minutes apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from lab.bench.model import BenchPlan, Section, fmt, ms, ratio
from lab.harness.load import Signup, generate_load, saturate
from lab.harness.measure import Latency, commit_times, latency_of
from lab.harness.polling import wait_for
from lab.harness.stack import Stack
from services.api.passwords import hash_now

STRATEGIES = ("outbox", "fixed_delay", "immediate")
FIXED_DELAY_MS = 10_000
# An idle Dramatiq consumer backs off up to this many ms between polls of Redis (DESIGN §5): with the lab's
# 50 it alone can take half the outbox's latency budget. The same for every strategy.
WORKER_TIMEOUT_MS = 20
# Signups in flight at saturation: enough to keep every core hashing while others wait on the database.
CONCURRENCY = (os.cpu_count() or 1) + 2
API_PAIR = ("none", "outbox")


class ApiCell(NamedTuple):
    latency: Latency
    saturation: float
    """Accepted signups/s with ``CONCURRENCY`` in flight."""
    failed: int
    hash_s: float
    bound: float
    parallel: float


def hashing_bound(samples: int) -> tuple[float, float, float]:
    """(seconds per hash, cores ÷ its CPU seconds, hashes/s measured with one thread per core) for the API's
    hasher. The bound divides by CPU time, not by the wait: one hash runs its lanes on several threads."""
    cores = os.cpu_count() or 1
    durations = []
    cpu_started = time.process_time()  # every thread of this process: the lanes' too
    for _ in range(samples):
        started = time.perf_counter()
        hash_now("bench-password-1")
        durations.append(time.perf_counter() - started)
    cpu_per_hash = (time.process_time() - cpu_started) / samples
    one = statistics.median(durations)
    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(hash_now, ["bench-password-1"] * samples * cores))
    parallel = samples * cores / (time.perf_counter() - started)
    return one, cores / cpu_per_hash, parallel


def _services(strategy: str) -> tuple[str, ...]:
    return ("api", "relay", "worker") if strategy == "outbox" else ("api", "worker")


async def first_emails(stack: Stack, accepted: list[Signup], *, within_s: float) -> dict[str, float]:
    """username → first email receive time, once every accepted signup has one (or ``within_s`` passed)."""
    wanted = {signup.username for signup in accepted}

    def first() -> dict[str, float]:
        seen: dict[str, float] = {}
        for delivery in stack.sink.snapshot():
            for address in delivery.recipients:
                name = address.split("@", 1)[0]
                seen[name] = min(seen.get(name, delivery.received_at), delivery.received_at)
        return seen

    async def complete() -> bool:
        return wanted <= first().keys()

    with contextlib.suppress(TimeoutError):  # missing emails are reported as such, not as a crash
        await wait_for(complete, timeout=within_s, what="every email")
    return first()


async def _latency_cell(strategy: str, *, rate: float, plan: BenchPlan, work_dir: Path, pg: str) -> list[str]:
    env = {"TASK_PROCESS_IN_MS": str(FIXED_DELAY_MS), "dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS)}
    async with Stack(
        work_dir=work_dir / strategy,
        strategy=strategy,
        env=env,
        services=_services(strategy),
        pg_admin_url=pg,
    ) as stack:
        wait_s = 30 + (FIXED_DELAY_MS / 1000 if strategy == "fixed_delay" else 0)
        signups, latency = await commit_to_email(
            stack, rate=rate, duration_s=plan.duration_s, prefix=strategy, within_s=wait_s
        )
    accepted = [s for s in signups if s.accepted]
    return [strategy, str(len(signups)), str(len(accepted)), str(len(latency.samples)), *_quantiles(latency)]


async def commit_to_email(
    stack: Stack, *, rate: float, duration_s: float, prefix: str, within_s: float = 30
) -> tuple[list[Signup], Latency]:
    """``rate`` signups/s for ``duration_s`` through the stack's API, then (within ``within_s`` of the last
    answer) each accepted signup's time from the API's post-commit log line to the sink's first receipt."""
    signups = await generate_load(stack.api_url, rate=rate, duration_s=duration_s, prefix=prefix)
    accepted = [s for s in signups if s.accepted]
    first = await first_emails(stack, accepted, within_s=within_s)
    # The API's post-commit log line, not the response: a busy machine can delay the response by seconds.
    commits = commit_times(stack.services["api"].log_lines())
    latency = latency_of(
        first[s.username] - commits.get(s.username, s.committed_at) for s in accepted if s.username in first
    )
    return signups, latency


def _quantiles(latency: Latency) -> list[str]:
    return [ms(latency.p50), ms(latency.p95), ms(latency.p99), ms(latency.max)]


async def latency_section(*, rate: float, capped: str, plan: BenchPlan, work_dir: Path, pg: str) -> Section:
    """Section 1: commit → email accepted by the sink, per strategy, at ``rate`` signups/s."""
    rows = [await _latency_cell(s, rate=rate, plan=plan, work_dir=work_dir, pg=pg) for s in STRATEGIES]
    p = {row[0]: [None if c == "-" else float(c) for c in row[4:]] for row in rows}
    figures = {
        "rate": rate,
        "outbox_p50_ms": p["outbox"][0],
        "outbox_p99_ms": p["outbox"][2],
        "fixed_delay_p99_over_outbox_p99": ratio(p["fixed_delay"][2], p["outbox"][2]),
        "immediate_p99_over_outbox_p99": ratio(p["immediate"][2], p["outbox"][2]),
    }
    return Section(
        key="latency",
        title=f"1. Commit → email latency at {rate:g} signups/s for {plan.duration_s:g} s",
        headers=["strategy", "offered", "accepted", "emails", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        rows=rows,
        figures=figures,
        notes=[
            capped,
            f"Every worker ran with dramatiq_worker_timeout={WORKER_TIMEOUT_MS} ms. Latency runs from the "
            "API's post-commit log line to the sink's receipt.",
            f"fixed_delay p99 / outbox p99 = {fmt(figures['fixed_delay_p99_over_outbox_p99'], 1)} times "
            "(target ≥ 100); targets for outbox: p50 ≤ 30 ms, p99 ≤ 100 ms.",
        ],
    )


def _api_latency(signups: list[Signup]) -> Latency:
    return latency_of(s.committed_at - s.sent_at for s in signups if s.accepted)


def _throughput(signups: list[Signup]) -> float:
    accepted = [s for s in signups if s.accepted]
    if not accepted:
        return 0.0
    span = max(s.committed_at for s in accepted) - min(s.sent_at for s in signups)
    return len(accepted) / span if span > 0 else 0.0


async def _api_cells(*, rate: float, plan: BenchPlan, work_dir: Path, pg: str) -> dict[str, ApiCell]:
    """strategy → its figures. Both APIs run at once and take their steady load side by side (half the rate
    each), so that the machine's changing load hits both alike; at saturation each runs alone, one after
    the other, right after the hashing bound is measured again (the machine's load changes by the minute).
    """
    stacks = {
        s: Stack(work_dir=work_dir / f"api-{s}", strategy=s, services=("api",), pg_admin_url=pg)
        for s in API_PAIR
    }
    cells: dict[str, ApiCell] = {}
    async with stacks["none"], stacks["outbox"]:
        steady = await asyncio.gather(
            *(
                generate_load(stacks[s].api_url, rate=rate / 2, duration_s=plan.duration_s, prefix="steady")
                for s in API_PAIR
            )
        )
        for n, s in enumerate(API_PAIR):
            hashing = await asyncio.to_thread(hashing_bound, plan.hash_samples)
            flood = await saturate(
                stacks[s].api_url, concurrency=CONCURRENCY, duration_s=plan.saturation_s, prefix="flood"
            )
            failed = sum(1 for x in steady[n] + flood if not x.accepted)
            cells[s] = ApiCell(_api_latency(steady[n]), _throughput(flood), failed, *hashing)
    return cells


def _share(cell: ApiCell) -> list[str]:
    return [fmt(cell.saturation / cell.bound), str(cell.failed)]


async def api_section(*, rate: float, plan: BenchPlan, work_dir: Path, pg: str) -> Section:
    """Section 2: the API with ``outbox`` against the same API with ``none``; saturation against the bound."""
    cells = await _api_cells(rate=rate, plan=plan, work_dir=work_dir, pg=pg)
    rows = [
        [s, *_quantiles(c.latency)[:3], f"{c.saturation:.2f}", f"{c.bound:.2f}", *_share(c)]
        for s, c in cells.items()
    ]
    base, out = cells["none"], cells["outbox"]
    added = ratio(out.latency.p50, base.latency.p50)
    figures = {
        "rate": rate,
        "hash_ms": out.hash_s * 1000,
        "hashing_bound_per_s": out.bound,
        "parallel_hashes_per_s": out.parallel,
        "none_p50_ms": None if base.latency.p50 is None else base.latency.p50 * 1000,
        "outbox_p50_ms": None if out.latency.p50 is None else out.latency.p50 * 1000,
        "added_median_latency_pct": None if added is None else (added - 1) * 100,
        "outbox_saturation_per_s": out.saturation,
        "none_saturation_per_s": base.saturation,
        "outbox_saturation_over_bound": ratio(out.saturation, out.bound),
        "none_saturation_over_bound": ratio(base.saturation, base.bound),
        "outbox_saturation_over_none": ratio(out.saturation, base.saturation),
        "outbox_saturation_over_parallel_hashing": ratio(out.saturation, out.parallel),
    }
    hash_s, bound, parallel = out.hash_s, out.bound, out.parallel
    return Section(
        key="api",
        title=f"2. API cost of the outbox ({rate:g} signups/s for {plan.duration_s:g} s, then saturated)",
        headers=["strategy", "p50 ms", "p95 ms", "p99 ms", "saturation /s", "bound /s", "of bound", "failed"],
        rows=rows,
        figures=figures,
        notes=[
            "Bound: measured just before each saturation run. Before the outbox's: one argon2id hash "
            f"(argon2-cffi's parameters, the API's hasher) {hash_s * 1000:.0f} ms, "
            f"{(os.cpu_count() or 1) / bound * 1000:.0f} ms of CPU (its lanes run on several threads); "
            f"bound = {os.cpu_count()} cores ÷ that CPU = {bound:.2f} signups/s; {parallel:.2f} hashes/s "
            "measured with one thread per core.",
            "Added median latency of the outbox: "
            f"{fmt(figures['added_median_latency_pct'], 1)} % (target ≤ 10 %); saturation "
            f"{fmt(figures['outbox_saturation_over_bound'])} of the bound (target ≥ 0.80), "
            f"{fmt(figures['outbox_saturation_over_parallel_hashing'])} of the measured parallel "
            "hashing rate.",
            "Only `signup api` runs in this section (no relay or worker), so the difference is the API's "
            f"own. Latency: both APIs at once, {rate / 2:g} signups/s each, side by side. "
            f"Saturation: {CONCURRENCY} signups kept in flight for {plan.saturation_s:g} s, "
            "accepted ÷ elapsed.",
        ],
    )
