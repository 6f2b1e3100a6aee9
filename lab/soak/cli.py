"""``signup soak [--signups N] [--rate R] [--seed S] [--resend-share F] [--resend-min-interval-s S]
[--resend-max-per-day N] [--out PATH]``: one soak, judged, and its report.

Exit code 0 when the promise held (see lab/soak/verdict.py), 1 otherwise; the services' logs stay in a
temporary directory, which the last line names.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from lab.harness.measure import commit, machine
from lab.harness.processes import run_stoppable
from lab.soak.plan import SoakPlan
from lab.soak.report import write_report
from lab.soak.runner import run_soak
from shared.logging import configure_logging, get_logger
from shared.settings import Settings

log = get_logger()


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``signup soak`` command. It brings its own PostgreSQL and Redis: ``settings`` are not used."""
    configure_logging(service="soak", log_format="console")
    options = ("signups", "rate", "seed", "resend_share", "resend_min_interval_s", "resend_max_per_day")
    chosen = {name: getattr(args, name) for name in options}
    plan = SoakPlan(**{name: value for name, value in chosen.items() if value is not None})
    work_dir = Path(tempfile.mkdtemp(prefix="signup-soak-"))
    began, load_before, at = time.monotonic(), os.getloadavg(), commit()  # what runs: the code at start
    try:
        verdict = run_stoppable(run_soak(plan, work_dir=work_dir))
    except asyncio.CancelledError:
        print("signup soak: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    if args.out:
        host, load_after = machine(), os.getloadavg()
        command = shlex.join(["signup", *sys.argv[1:]])
        run = (
            f"Run: `{command}` at commit {at}, {(time.monotonic() - began) / 60:.0f} min, on "
            f"{host['nproc']} CPUs "
            f"({host['cpu']}), Python {host['python']}; load average (1 min) {load_before[0]:.2f} before, "
            f"{load_after[0]:.2f} after."
        )
        write_report(verdict, plan=plan, path=Path(args.out), run=run)
    log.info("soak finished", ok=verdict.ok, logs=str(work_dir), problems=verdict.problems())
    return 0 if verdict.ok else 1
