"""``signup bench [--quick] [--out-dir DIR]``: thirteen benchmarks, each a ratio to a baseline of the run.

1. commit → email latency per strategy; 2. the API's cost of the outbox and its saturation against the
argon2id hashing bound; 3. relay drain against a plain ``broker.enqueue`` loop; 4. claim cost against table
size; 5. one worker's email throughput; 6. overload at 1x, 2x and 5x the hashing capacity (with a chart,
``overload.png``); 7. the API's latency with tracing off and exporting OTLP; 8. an idle worker's cost
and the latency after idle; 9. a reconciliation pass against the number of published rows
(``--reconcile-rows``); 10. the outbox beside Procrastinate (commit → email and a backlog's drain,
``lab/bench/peer.py``); 11. the broker options side by side (``lab/bench/brokers.py``); 12. the operator
console's queries per page (``lab/bench/console.py``); 13. slow clients and a resend flood against the
API's probes (``lab/bench/slow.py``). Prints each table and writes ``BENCHMARKS.md``
and ``bench.json`` to ``--out-dir`` (in ``BENCHMARKS.md`` only the part between the bench markers is
replaced, so hand-written analysis around it survives a re-run). Exit code 0 when every section ran.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from lab.bench.brokers import brokers_section
from lab.bench.console import console_section
from lab.bench.e2e import api_section, hashing_bound, latency_section
from lab.bench.idle import idle_section
from lab.bench.model import FULL, QUICK, BenchPlan, Section
from lab.bench.overload import chart, overload_section
from lab.bench.peer import peer_section
from lab.bench.reconcile import reconcile_section
from lab.bench.relay import drain_section
from lab.bench.slow import slow_section
from lab.bench.tracing import tracing_section
from lab.bench.worker import claim_section, worker_section
from lab.harness.database import admin_url
from lab.harness.measure import machine
from lab.harness.processes import run_stoppable
from lab.harness.stack import Stack
from services.api.passwords import keep_hash_memory
from shared.logging import configure_logging
from shared.settings import Settings

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# Of the hashes/s measured with one thread per core: a steady rate the API keeps up with, queueing aside.
# (Not of cores ÷ one hash's time, which counts a core once per lane thread: at 60 % of that the API queued
# answers for 11 s and timed one out.)
SUSTAINABLE_SHARE = 0.6


async def versions(pg: str) -> dict[str, str]:
    connection = await asyncpg.connect(pg, timeout=10)
    try:
        postgres = str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()
    redis = subprocess.run(  # noqa: ASYNC221 - a one-off version query before any measurement
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout
    return {"postgresql": postgres, "redis": redis.split("v=", 1)[-1].split()[0] if "v=" in redis else "?"}


PARTS = (
    "latency",
    "api",
    "tracing",
    "relay",
    "overload",
    "idle",
    "reconcile",
    "peer",
    "brokers",
    "console",
    "slow",
)
"""What ``--only`` chooses from; ``relay`` is sections 3 to 5 (drain, claim, one worker)."""


async def sections(
    plan: BenchPlan,
    *,
    work_dir: Path,
    pg: str,
    say: Any,
    only: frozenset[str] = frozenset(PARTS),
    rate: float | None = None,
) -> list[Section]:
    """The chosen sections; ``rate`` (``--rate``) sets the steady rate of sections 1 and 8 as given, which
    otherwise is ``plan.rate`` capped at ``SUSTAINABLE_SHARE`` of the hashing rate measured first."""
    hash_s, bound, parallel = hashing_bound(plan.hash_samples)
    measured = (
        f"the argon2id hashes/s this machine measured now with one thread per core ({parallel:.2f}/s; "
        f"cores ÷ one hash's CPU time would be {bound:.2f}/s)"
    )
    if rate is not None:
        capped = f"{rate:g}/s as asked (--rate) = {rate / parallel:.0%} of {measured}."
    else:
        rate = min(plan.rate, round(SUSTAINABLE_SHARE * parallel, 1))
        capped = (
            f"Offered {plan.rate:g}/s was capped to {rate:g}/s = {SUSTAINABLE_SHARE:.0%} of {measured}: "
            "closer to that the API queues, and latency measures the queue, not the dispatch."
            if rate < plan.rate
            else f"{rate:g}/s is below {SUSTAINABLE_SHARE:.0%} of {measured}."
        )
    say(f"hashing: {hash_s * 1000:.0f} ms per hash, {parallel:.2f}/s in parallel; steady rate {rate:g}/s")
    done: list[Section] = []

    def report(section: Section) -> None:
        done.append(section)
        say(table(section))

    if "latency" in only:
        report(await latency_section(rate=rate, capped=capped, plan=plan, work_dir=work_dir, pg=pg))
    # Half the rate of section 1: two APIs share the machine here, and queueing would hide the dispatch cost.
    if "api" in only:
        report(await api_section(rate=rate / 2, plan=plan, work_dir=work_dir, pg=pg))
    if "tracing" in only:
        report(await tracing_section(rate=rate / 2, plan=plan, work_dir=work_dir, pg=pg))
    if "relay" in only:
        async with Stack(work_dir=work_dir / "relay", services=("worker",), pg_admin_url=pg) as stack:
            stack.stop("worker")  # nothing may consume the drained messages
            for run_section in (drain_section, claim_section, worker_section):
                report(await run_section(stack, plan))
    if "overload" in only:
        report(await overload_section(capacity=parallel, plan=plan, work_dir=work_dir, pg=pg))
    if "idle" in only:
        report(await idle_section(rate=rate, plan=plan, work_dir=work_dir, pg=pg))
    if "reconcile" in only:
        report(await reconcile_section(plan, work_dir=work_dir, pg=pg))
    if "peer" in only:
        report(await peer_section(plan, capacity=parallel, work_dir=work_dir, pg=pg))
    if "brokers" in only:
        report(await brokers_section(plan))
    if "console" in only:
        report(await console_section(plan, work_dir=work_dir, pg=pg))
    if "slow" in only:
        report(await slow_section(plan, work_dir=work_dir, pg=pg))
    return done


def table(section: Section) -> str:
    """The section as a Markdown table (which reads well in a terminal too), with its notes."""
    lines = [f"### {section.title}", "", "| " + " | ".join(section.headers) + " |"]
    lines.append("|" + "|".join("---" for _ in section.headers) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in section.rows]
    lines += ["", *(f"- {note}" for note in section.notes if note)]
    return "\n".join(lines) + "\n"


def header(meta: dict[str, Any]) -> str:
    return (
        f"Run on {meta['date']} with `{meta['command']}` ({meta['duration_s']:.0f} s).\n\n"
        f"Machine: {meta['nproc']} cores, {meta['cpu']}; PostgreSQL {meta['postgresql']}, "
        f"Redis {meta['redis']}, Python {meta['python']}. "
        f"Load average (1, 5, 15 min) before: {meta['load_before']}, after: {meta['load_after']}.\n"
    )


def write_reports(done: list[Section], meta: dict[str, Any], out_dir: Path, *, part: str = "") -> Path:
    """``BENCHMARKS.md`` and ``bench.json``; a partial run (``part``) writes ``bench.<part>.json`` and
    replaces only its own marked block in ``BENCHMARKS.md``, so the full run's figures stay."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start, end = (f"<!-- bench:{part}:start -->", f"<!-- bench:{part}:end -->") if part else (START, END)
    data = {
        "meta": meta,
        "sections": {s.key: {"title": s.title, "rows": s.rows, "figures": s.figures} for s in done},
    }
    (out_dir / (f"bench.{part}.json" if part else "bench.json")).write_text(json.dumps(data, indent=2) + "\n")
    overload = next((s for s in done if s.key == "overload"), None)
    if overload is not None and chart(overload, out_dir / "overload.png") is None:
        print("no chart: docs/overload.png needs matplotlib (the dev dependency group)")
    generated = "\n".join([start, header(meta), *(table(s) for s in done), end])
    doc = out_dir / "BENCHMARKS.md"
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if start in old and end in old:
        text = old[: old.index(start)] + generated + old[old.index(end) + len(end) :]
    else:
        text = f"{old.rstrip()}\n\n{generated}\n"
    doc.write_text(text)
    return doc


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``signup bench`` command."""
    keep_hash_memory()  # section 2 measures the API's hasher as ``signup api`` runs it
    configure_logging(service="bench", log_format="console", log_level="warning")
    plan = QUICK if args.quick else FULL
    if args.reconcile_rows:
        plan = dataclasses.replace(plan, reconcile_rows=args.reconcile_rows)
    only = frozenset(args.only.split(",")) if args.only else frozenset(PARTS)
    if unknown := only - set(PARTS):
        print(
            f"signup bench: --only takes {', '.join(PARTS)}; not {', '.join(sorted(unknown))}",
            file=sys.stderr,
        )
        return 2
    if args.rate < 0:
        print(f"signup bench: --rate must be positive, not {args.rate:g}", file=sys.stderr)
        return 2
    part = "+".join(p for p in PARTS if p in only) if args.only else ""
    work_dir = Path(tempfile.mkdtemp(prefix="signup-bench-"))
    pg = admin_url(settings.database_url)
    began = time.monotonic()
    print(f"signup bench{' --quick' if args.quick else ''}: service logs in {work_dir}", flush=True)
    meta: dict[str, Any] = {
        **machine(),
        **asyncio.run(versions(pg)),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "signup bench"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if part else "")
        + (f" --rate {args.rate:g}" if args.rate else ""),
        "load_before": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    try:
        done = run_stoppable(
            sections(
                plan,
                work_dir=work_dir,
                pg=pg,
                say=lambda text: print(f"[{time.monotonic() - began:4.0f}s] {text}", flush=True),
                only=only,
                rate=args.rate or None,
            )
        )
    except asyncio.CancelledError:
        print(
            "signup bench: interrupted; every stack's processes and database were cleaned up", file=sys.stderr
        )
        return 130
    meta["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["duration_s"] = time.monotonic() - began
    doc = write_reports(done, meta, Path(args.out_dir), part=part)
    data = doc.parent / (f"bench.{part}.json" if part else "bench.json")
    print(f"wrote {doc} and {data} in {meta['duration_s']:.0f} s ({shlex.join(sys.argv)})")
    return 0
