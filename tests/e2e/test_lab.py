"""``signup lab --quick`` end to end: real processes per cell, and the README's claims checked in its JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lab.compare.cells import QUICK_CELLS, full_plan, quick_plan
from tests.support import RedisServer, missing_service, repo_root, run_signup

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab_report(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> dict[str, Any]:
    if not RedisServer.available():
        missing_service("redis-server is not installed")
    out_dir = tmp_path_factory.mktemp("lab")
    # The lab creates one database per cell on the server of DATABASE_URL.
    # TMPDIR: the service logs the lab keeps go to the test's directory, not /tmp.
    env = {**os.environ, "DATABASE_URL": database_url, "TMPDIR": str(out_dir)}
    completed = run_signup("lab", "--quick", "--out-dir", str(out_dir), env=env, timeout=240, cwd=repo_root())
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert {"lab.md", "lab.json", "lab.png"} <= {p.name for p in Path(out_dir).iterdir()}
    assert list(Path(out_dir).glob("signup-lab-*/outbox-normal/api.log")), "service logs are kept"
    report: dict[str, Any] = json.loads((out_dir / "lab.json").read_text())
    return report


def cell(report: dict[str, Any], strategy: str, scenario: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in report["cells"] if (c["strategy"], c["scenario"]) == (strategy, scenario)
    ]
    assert len(found) == 1, f"{strategy}/{scenario} did not run"
    return found[0]


def test_outbox_loses_nothing_invents_nothing_duplicates_nothing(lab_report) -> None:
    outbox_cells = [c for c in lab_report["cells"] if c["strategy"] == "outbox"]
    assert len(outbox_cells) >= 2
    for found in outbox_cells:
        assert found["committed"] > 0, found["scenario"]
        assert (found["lost"], found["phantom"], found["duplicates"]) == (0, 0, 0), found["scenario"]


def test_enqueue_before_a_slow_commit_loses_emails_with_skip_retry(lab_report) -> None:
    found = cell(lab_report, "immediate_skip", "slow_commit")
    assert found["committed"] > 0 and found["lost"] > 0


def test_fixed_delay_makes_every_email_wait_and_the_outbox_does_not(lab_report) -> None:
    # The course's delay runs from the enqueue, which precedes the commit by the rest of the transaction:
    # ~10.05 s on a quiet machine, 9.86 s measured with a load average of 30. Hence the margin.
    assert cell(lab_report, "fixed_10s", "normal")["latency"]["p50"] >= 9.5
    assert cell(lab_report, "outbox", "normal")["latency"]["p50"] < 1.0


def test_redis_down_fails_course_signups_but_not_outbox_ones(lab_report) -> None:
    course = cell(lab_report, "fixed_1s_retry", "redis_down")
    assert course["failed"] > 0
    outbox = cell(lab_report, "outbox", "redis_down")
    assert outbox["failed"] == 0 and outbox["accepted"] == outbox["offered"] > 0
    assert outbox["delivered"] == outbox["committed"] == outbox["accepted"]


def test_the_quick_run_is_the_quick_plan_each_cell_under_its_full_load(lab_report) -> None:
    """``--quick`` runs the few cells the table's claims need, not the full grid, each with all its load."""
    plan = quick_plan()
    assert sorted((c["strategy"], c["scenario"]) for c in lab_report["cells"]) == sorted(QUICK_CELLS)
    assert lab_report["plan"]["load_s"] == plan.load_s < full_plan().load_s
    for found in lab_report["cells"]:
        assert found["offered"] == round(plan.rate * plan.load_s), found


def test_report_names_the_command_and_machine(lab_report) -> None:
    assert lab_report["command"] == "signup lab --quick"
    assert lab_report["machine"]["nproc"] >= 1 and lab_report["machine"]["cpu"]
