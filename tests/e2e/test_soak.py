"""A short soak (about 90 s): real processes, killed and restarted, and the promise still holds.

The full run is ``signup soak`` (``just soak``: 10,000 signups, docs/RELIABILITY.md); this one sends 200
signups at 5/s while the relay and the worker are SIGKILLed every few seconds, Redis is SIGKILLed once,
loses its data twice (FLUSHALL, a restart without its files), PostgreSQL crashes once and SMTP answers 451
to a fifth of the attempts; a third of the new users ask for new emails, too soon (refused) and in time
(sent), some after verifying (nothing to send).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab.harness.postgres import PrivatePostgres
from lab.soak.plan import SoakPlan
from lab.soak.report import write_report
from lab.soak.runner import run_soak
from tests.support import missing_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHORT = SoakPlan(
    signups=200,
    rate=5,
    kill_every_s=(4.0, 8.0),
    drain_timeout_s=40.0,
    settle_s=2.0,
    resend_share=0.3,
    resend_min_interval_s=3,
    resend_max_per_day=2,
    resend_later=3,
)


@pytest.fixture(autouse=True)
def servers() -> None:
    if not PrivatePostgres.available() or shutil.which("redis-server") is None:
        missing_service("the soak needs PostgreSQL server binaries and redis-server")


async def test_every_committed_signup_gets_exactly_one_email_under_faults(tmp_path: Path) -> None:
    verdict = await run_soak(SHORT, work_dir=tmp_path)

    assert verdict.ok, "\n".join(verdict.problems()) + f"\nservice logs: {tmp_path}"
    # The faults really happened, and enough signups got through for the verdict to mean something.
    assert verdict.faults["SIGKILL relay"] >= 2 and verdict.faults["SIGKILL worker"] >= 2
    assert verdict.faults["SIGKILL Redis, restart"] == 1
    assert verdict.faults["Redis FLUSHALL"] == 1 and verdict.faults["Redis restart without its data"] == 1
    assert verdict.faults["PostgreSQL crash (immediate stop), restart"] == 1
    assert verdict.smtp_refused > 0 and verdict.api_answers["503"] > 0
    assert verdict.committed >= SHORT.signups * 0.7 and verdict.deliveries >= verdict.committed
    assert verdict.unpublished == 0
    # Resends: each one the limits let through is an outbox event whose email arrived once (ok: no lost, no
    # duplicate); the too-early repeats were refused and sent nothing, and the third later request met
    # the daily limit.
    assert verdict.resends_counted >= verdict.resends_had_to_pass > 10
    assert verdict.resend_emails == verdict.resends_counted
    assert verdict.events == verdict.committed + verdict.resends_counted
    assert verdict.resends_had_to_refuse > 10
    assert verdict.resend_outcomes["rate_limited"] >= verdict.resends_had_to_refuse
    assert verdict.resend_outcomes["sent"] <= verdict.resends_counted
    assert verdict.resend_outcomes["verified"] > 0
    report = tmp_path / "RELIABILITY.md"
    write_report(verdict, plan=SHORT, path=report)
    text = report.read_text()
    assert "promise kept" in text
    assert f"| resend emails received (distinct Message-IDs) | {verdict.resend_emails} of " in text
