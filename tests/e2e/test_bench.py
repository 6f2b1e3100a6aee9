"""``signup bench --quick`` as a real process: every section produced, with numbers and computed ratios.

It checks the shape of the report, not the targets: the figures depend on the machine and its load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import RedisServer, missing_service, run_signup

SECTIONS = (
    "latency",
    "api",
    "tracing",
    "drain",
    "claim",
    "worker",
    "idle",
    "overload",
    "reconcile",
    "peer",
    "brokers",
    "console",
    "slow",
)
PEER = tuple(
    f"{side}_{figure}"
    for side in ("outbox", "procrastinate")
    for figure in ("p50_ms", "p95_ms", "p99_ms", "committed", "emails", "drain_s")
)
RATIOS = {
    "latency": ("fixed_delay_p99_over_outbox_p99", "outbox_p50_ms", "outbox_p99_ms"),
    "api": ("added_median_latency_pct", "outbox_saturation_over_bound", "hashing_bound_per_s"),
    "drain": ("relay_over_plain", "relay_per_s", "plain_per_s"),
    "brokers": ("streams_p50_ms", "streams_idle_redis_per_s", "streams_over_stock_drain"),
    "claim": ("large_over_small", "small_ms", "large_ms"),
    "worker": ("emails_per_s",),
    "tracing": ("off_p50_ms", "otlp_p50_ms", "otlp_added_median_latency_pct", "otlp_exports"),
    "overload": (
        "capacity_per_s",
        "goodput_over_capacity_1x",
        "goodput_over_capacity_5x",
        "capacity_beside_idle_stack_per_s",
        "capacity_beside_idle_stack_after_5x_per_s",
        "goodput_over_idle_stack_capacity_5x",
        "stack_saturated_per_s",
        "goodput_over_stack_saturated_5x",
        "cpu_api_hashing_5x",
        "cpu_api_loop_5x",
        "cpu_generator_5x",
        "cpu_postgres_5x",
    ),
    "reconcile": ("small_check_ms", "large_check_ms", "large_over_small", "large_republish_ms"),
    "peer": (*PEER, "procrastinate_p99_over_outbox_p99", "procrastinate_drain_over_outbox_drain"),
    "console": ("worst_p99_ms", "outbox_rows"),
    "slow": ("slow_closed", "slow_held_max_s", "healthz_p99_s", "verify_p99_s", "resend_answers_per_s"),
    "idle": (
        "wake_1p_idle_redis_per_s",
        "wake_4p_idle_cpu_pct",
        "wake_1p_steady_p99_ms",
    ),
}
# A difference of two medians: on a quick run noise can make it negative, which is a true measurement.
SIGNED = {"added_median_latency_pct", "otlp_added_median_latency_pct"}
QUICK_LIMIT_S = 600  # the brief's 2 minutes holds on a quiet machine; this one is shared and loaded
# Slow: CI runs it once, on the host. Its pytest timeout outlasts the subprocess's own limit, so that a loaded
# machine fails it with the bench's output, not with a bare pytest timeout at the suite's default 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(QUICK_LIMIT_S + 60)]


def bench(out: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``signup bench --quick ARGS --out-dir OUT`` as a real process, within ``QUICK_LIMIT_S``."""
    env = {**os.environ, "DATABASE_URL": database_url}
    return run_signup("bench", "--quick", *args, "--out-dir", str(out), env=env, timeout=QUICK_LIMIT_S)


def number(value: object, *, signed: bool = False) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and (signed or value >= 0)


async def test_quick_bench_reports_every_section_with_ratios(tmp_path: Path, database_url: str) -> None:
    if not RedisServer.available():
        missing_service("redis-server is not installed")
    out = tmp_path / "out"
    # --rate sets the steady rate as given (sections 1 and 8; 2 and 7 at half of it).
    done = bench(out, database_url, "--rate", "3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads((out / "bench.json").read_text())
    assert set(report["sections"]) == set(SECTIONS)
    for key, names in RATIOS.items():
        section = report["sections"][key]
        assert section["rows"], key
        for name in names:
            assert number(section["figures"][name], signed=name in SIGNED), (key, name, section["figures"])
    for strategy_row in report["sections"]["latency"]["rows"]:
        assert int(strategy_row[3]) == int(strategy_row[2]) > 0, strategy_row  # every accepted signup emailed
    assert report["meta"]["nproc"] and report["meta"]["postgresql"] and report["meta"]["load_before"]
    assert report["sections"]["tracing"]["figures"]["otlp_exports"] > 0  # spans really left the OTLP API
    assert report["sections"]["overload"]["figures"]["accepted_without_email"] == 0
    # The CPU went somewhere: the API hashed while the load ran (its shares are of all cores).
    assert 0 < report["sections"]["overload"]["figures"]["cpu_api_hashing_5x"] <= 1
    assert (out / "overload.png").stat().st_size > 0
    assert report["sections"]["reconcile"]["figures"]["published_rows"] == 20_000  # --quick keeps it small

    markdown = (out / "BENCHMARKS.md").read_text()
    for title in (
        "1. Commit",
        "2. API cost",
        "3. Relay drain",
        "4. Claim",
        "5. One worker",
        "6. Overload",
        "7. Tracing",
        "8. Idle",
        "9. Reconciliation",
        "10. Outbox beside Procrastinate",
        "11. Broker options",
        "12. The operator console",
        "13. Slow clients",
    ):
        assert f"### {title}" in markdown
    assert "signup bench --quick --rate 3" in markdown
    assert "### 1. Commit → email latency at 3 signups/s" in markdown
    assert "### 8. Idle cost and latency (3 s idle, 3/s)" in markdown
    assert "3/s as asked (--rate)" in markdown


async def test_quick_peer_section_alone_reports_both_paths(tmp_path: Path, database_url: str) -> None:
    """``--only peer``: the outbox and Procrastinate each delivered every signup and drained the backlog."""
    if not RedisServer.available():
        missing_service("redis-server is not installed")
    out = tmp_path / "out"
    done = bench(out, database_url, "--only", "peer")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads((out / "bench.peer.json").read_text())
    assert set(report["sections"]) == {"peer"}
    section = report["sections"]["peer"]
    figures = section["figures"]
    for name in RATIOS["peer"]:
        assert number(figures[name]), (name, figures)
    assert figures["rate"] == 8 and figures["drain_jobs"] == 500  # --quick keeps the backlog small
    paths = [row[0] for row in section["rows"]]
    assert paths == ["outbox (api, relay, worker)", "Procrastinate (worker)"]
    for row in section["rows"]:
        assert int(row[3]) == int(row[2]) == int(row[1]) == 24, row  # 8/s for 3 s, committed and emailed
        assert float(row[8]) > 0, row  # the backlog's last email came after its commit
    markdown = (out / "BENCHMARKS.md").read_text()
    assert "<!-- bench:peer:start -->" in markdown
    assert (
        "### 10. Outbox beside Procrastinate: commit → email at 8/s for 3 s, and a 500-email backlog"
        in markdown
    )
    assert "signup bench --quick --only peer" in markdown
