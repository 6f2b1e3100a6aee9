"""The alert rules an operator loads: each has a summary, a runbook section that exists, and a promtool test.

(The expressions themselves are tested by ``promtool test rules``: ``just alerts``, and a stage of CI.)
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support import repo_root

RULES = repo_root() / "deploy" / "prometheus" / "alerts.yml"
TESTS = repo_root() / "deploy" / "prometheus" / "alerts.test.yml"
OPERATIONS = repo_root() / "docs" / "OPERATIONS.md"


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rules_cover_what_an_operator_must_hear_about() -> None:
    assert {rule["alert"] for rule in alerts()} == {
        "OutboxBacklogGrowing",
        "OutboxUnhandledTooOld",
        "DeadLettersAppeared",
        "RelayGone",
        "WorkerGone",
        "EmailsFailing",
        "SignupsShed",
    }


def test_each_alert_has_a_summary_a_runbook_section_and_a_test() -> None:
    headings = {
        line[3:].strip().lower() for line in OPERATIONS.read_text().splitlines() if line.startswith("## ")
    }
    tested = {
        test["alertname"]
        for case in yaml.safe_load(TESTS.read_text())["tests"]
        for test in case["alert_rule_test"]
    }
    for rule in alerts():
        name = rule["alert"]
        assert rule["annotations"]["summary"], name
        runbook = rule["annotations"]["runbook"]
        assert re.fullmatch(r"docs/OPERATIONS\.md#[a-z]+", runbook), runbook
        assert runbook.split("#")[1] == name.lower() and name.lower() in headings, name
        assert name in tested, name
