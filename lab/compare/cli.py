"""``signup lab [--quick] [--out-dir DIR]``: the course's strategies against the outbox, same faults.

Runs every cell of the plan (``lab.compare.cells``) on its own stack, a few at a time, prints progress and
a table, and writes ``lab.md``, ``lab.json`` and ``lab.png`` to ``--out-dir``. Exit code 0 when every cell
ran; 2 at once when matplotlib (the dev dependency group) is missing, since the chart needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.compare.cells import Plan, full_plan, quick_plan
from lab.compare.experiment import CellResult, run_cell
from lab.compare.report import markdown, terminal_table, to_json
from lab.harness.database import admin_url
from lab.harness.measure import machine
from lab.harness.processes import run_stoppable
from shared.logging import configure_logging
from shared.settings import Settings

NO_MATPLOTLIB = (
    "signup lab: the chart (lab.png) needs matplotlib, which is in the dev dependency group, not in the "
    "runtime image: run it from a checkout after `uv sync` (`uv run signup lab`)."
)


async def run_plan(plan: Plan, *, work_dir: Path, pg_admin_url: str) -> list[CellResult]:
    """Every cell, ``plan.concurrency`` at a time; results in the plan's order. A failing cell stops all."""
    began = time.monotonic()
    gate = asyncio.Semaphore(plan.concurrency)

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - began:5.0f}s] {text}", flush=True)

    async def one(index: int) -> CellResult:
        async with gate:
            cell = plan.cells[index]
            progress(f"{cell.key}: starting ({index + 1}/{len(plan.cells)})")
            return await run_cell(cell, plan, work_dir=work_dir, progress=progress, pg_admin_url=pg_admin_url)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in range(len(plan.cells))]
    return [task.result() for task in tasks]


def write_reports(results: list[CellResult], meta: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lab.json").write_text(json.dumps(to_json(results, meta), indent=2) + "\n")
    (out_dir / "lab.md").write_text(markdown(results, meta) + "\n")
    from lab.compare.chart import write_chart  # matplotlib: a dev dependency, imported only to draw

    write_chart(results, out_dir / "lab.png")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``signup lab`` command."""
    if importlib.util.find_spec("matplotlib") is None:
        print(NO_MATPLOTLIB, file=sys.stderr)
        return 2
    configure_logging(service="lab", log_format="console", log_level="warning")
    plan = quick_plan() if args.quick else full_plan()
    work_dir = Path(tempfile.mkdtemp(prefix="signup-lab-"))
    print(f"signup lab: {len(plan.cells)} cells, {plan.concurrency} at a time; service logs in {work_dir}")
    started_at, began, load_at_start = datetime.now(UTC), time.monotonic(), os.getloadavg()
    try:
        results = run_stoppable(
            run_plan(plan, work_dir=work_dir, pg_admin_url=admin_url(settings.database_url))
        )
    except asyncio.CancelledError:
        print("signup lab: interrupted; every cell's processes and database were cleaned up", file=sys.stderr)
        return 130
    meta = {
        "command": "signup lab" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - began, 1),
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "plan": {
            "rate": plan.rate,
            "load_s": plan.load_s,
            "settle_s": plan.settle_s,
            "concurrency": plan.concurrency,
        },
    }
    print(terminal_table(results))
    out_dir = Path(args.out_dir)
    write_reports(results, meta, out_dir)
    print(f"wrote {out_dir / 'lab.md'}, {out_dir / 'lab.json'}, {out_dir / 'lab.png'}", file=sys.stderr)
    for cell_dir in work_dir.iterdir():
        shutil.rmtree(cell_dir / "redis", ignore_errors=True)  # keep the service logs, not the queues
    print(f"service logs kept in {work_dir}", file=sys.stderr)
    return 0
