"""The lab's definitions of lost, phantom, duplicate and latency, on hand-made observations."""

from __future__ import annotations

import json

from lab.compare.cells import QUICK_CELLS, SCENARIO, STRATEGY, full_plan, quick_plan
from lab.compare.outcome import measure
from lab.harness.load import Signup, email_of
from lab.harness.measure import commit_times, percentile, usernames_in_log
from lab.harness.smtp import Delivery


def signup(name: str, status: int = 200, committed_at: float = 100.0) -> Signup:
    return Signup(name, email_of(name), status, committed_at - 0.1, committed_at)


def mail(name: str, message_id: str, at: float) -> Delivery:
    return Delivery((email_of(name),), message_id, at)


def test_lost_phantom_duplicates_and_latency() -> None:
    signups = [signup("ok"), signup("twice"), signup("lost"), signup("rolled_back", status=503)]
    deliveries = [
        mail("ok", "<a>", 100.5),
        mail("twice", "<b>", 101.0),
        mail("twice", "<b>", 102.0),  # the same Message-ID again is one email, resent: not a duplicate
        mail("twice", "<c>", 103.0),
        mail("rolled_back", "<d>", 104.0),
    ]
    outcome = measure(
        signups=signups,
        committed={"ok", "twice", "lost"},
        deliveries=deliveries,
        worker_saw={"ok", "ghost_from_log"},
        held_in_redis={"ghost_in_dlq"},
        username_of={s.email: s.username for s in signups},
    )
    assert (outcome.offered, outcome.accepted, outcome.failed) == (4, 3, 1)
    assert (outcome.committed, outcome.delivered, outcome.emails) == (3, 2, 5)
    assert outcome.lost == 1
    assert outcome.phantom == 3 and outcome.phantom_emails == 1
    assert outcome.duplicates == 1
    assert outcome.latency.samples == [0.5, 1.0]
    assert (outcome.latency.p50, outcome.latency.max) == (0.5, 1.0)


def test_nothing_delivered_has_no_latency() -> None:
    outcome = measure(
        signups=[signup("a")],
        committed={"a"},
        deliveries=[],
        worker_saw=set(),
        held_in_redis=set(),
        username_of={},
    )
    assert outcome.lost == 1 and outcome.latency.p50 is None
    json.dumps(outcome.to_json())


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (0.5, 0.95, 0.99, 1.0)] == [50.0, 95.0, 99.0, 100.0]
    assert percentile([], 0.5) is None


def test_usernames_in_log_reads_json_lines_only() -> None:
    lines = [
        '{"event": "sent", "username": "a"}',
        "not json",
        '{"event": "x"}',
        '["list"]',
        '{"username": 3}',
    ]
    assert usernames_in_log(lines) == {"a"}


def test_plans_cover_what_the_lab_claims() -> None:
    full = full_plan()
    assert len(full.cells) == len(STRATEGY) * len(SCENARIO)
    assert {cell.key for cell in quick_plan().cells} == {f"{s}/{c}" for s, c in QUICK_CELLS}
    assert STRATEGY["outbox"].services == ("api", "relay", "worker")
    assert "relay" not in STRATEGY["fixed_10s"].services
    assert STRATEGY["immediate_skip"].env() == {"WORKER_SKIP_RETRY_MISSING_USER": "true"}
    assert STRATEGY["fixed_10s"].env()["TASK_PROCESS_IN_MS"] == "10000"


def test_statuses_are_counted() -> None:
    signups = [signup("a"), signup("b", status=503), signup("c", status=503), signup("d", status=0)]
    outcome = measure(
        signups=signups, committed={"a"}, deliveries=[], worker_saw=set(), held_in_redis=set(), username_of={}
    )
    assert outcome.statuses == {"0": 1, "200": 1, "503": 2}


def test_latency_is_measured_from_the_logged_commit_when_there_is_one() -> None:
    api_log = [
        '{"event": "signed up", "committed": true, "username": "a", "timestamp": "1970-01-01T00:01:39Z"}',
        '{"event": "user signed up", "username": "b", "timestamp": "1970-01-01T00:01:39.500000Z"}',
        '{"event": "request", "committed": "yes", "username": "b", "timestamp": "1970-01-01T00:01:39Z"}',
    ]
    logged = commit_times(api_log)
    assert logged == {"a": 99.0}
    outcome = measure(
        signups=[signup("a", committed_at=100.0), signup("b", committed_at=100.0)],
        committed={"a", "b"},
        deliveries=[mail("a", "<a>", 110.0), mail("b", "<b>", 110.0)],
        worker_saw=set(),
        held_in_redis=set(),
        username_of={email_of(n): n for n in "ab"},
        committed_at=logged,
    )
    assert outcome.latency.samples == [10.0, 11.0]
