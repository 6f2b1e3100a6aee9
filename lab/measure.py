"""From what one cell observed to the figures the lab reports (pure functions, no I/O).

Definitions (the report repeats them):

- accepted / failed: signups answered 200 / anything else (503 while Redis is down, an injected rollback,
  no answer at all).
- lost: a user that committed (has a ``users`` row at the end) but got no email by the cell's deadline.
- phantom: a username with no ``users`` row at the end for which the system nevertheless produced work: the
  worker handled a message for it (its JSON log names the username), a message for it is still held in Redis
  (any queue, delay queue or dead-letter queue), or an email reached it.
- duplicates: committed users who received more than one distinct ``Message-ID``.
- latency: for each accepted signup that got an email, first email received - commit. The commit time is
  the timestamp of the API's "user signed up" log line, written right after the commit; where that line
  is missing, the time the 200 response arrived (the API answers only after the commit). Every clock is
  this machine's wall clock. The log line is preferred because on a busy machine the response can lag the
  commit by a second or more, which would shorten every latency by as much.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from lab.load import Signup
from lab.sink import Delivery

SIGNED_UP_EVENT = "user signed up"
"""The API's log line after a signup's commit (services/api/signup.py)."""


@dataclass(frozen=True)
class Latency:
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    samples: list[float]


@dataclass(frozen=True)
class Outcome:
    """The figures of one cell."""

    offered: int
    accepted: int
    failed: int
    statuses: dict[str, int]
    """How many signups got each HTTP status ("0": no response)."""
    committed: int
    delivered: int
    """Committed users with at least one email."""
    emails: int
    lost: int
    phantom: int
    phantom_emails: int
    duplicates: int
    latency: Latency

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["latency"]["samples"] = [round(sample, 4) for sample in self.latency.samples]
        return data


def percentile(sorted_values: list[float], share: float) -> float | None:
    """Nearest-rank percentile of already sorted values; ``None`` for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_of(samples: Iterable[float]) -> Latency:
    values = sorted(samples)
    return Latency(
        p50=percentile(values, 0.50),
        p95=percentile(values, 0.95),
        p99=percentile(values, 0.99),
        max=values[-1] if values else None,
        samples=values,
    )


def _records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``lines`` (anything else is skipped)."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def usernames_in_log(lines: Iterable[str]) -> set[str]:
    """Every ``username`` a JSON log line names."""
    return {r["username"] for r in _records(lines) if isinstance(r.get("username"), str)}


def commit_times(api_log: Iterable[str]) -> dict[str, float]:
    """username → wall-clock time of the API's "user signed up" line (logged right after the commit)."""
    times: dict[str, float] = {}
    for record in _records(api_log):
        if record.get("event") == SIGNED_UP_EVENT and isinstance(record.get("username"), str):
            times[record["username"]] = datetime.fromisoformat(str(record["timestamp"])).timestamp()
    return times


def _names(delivery: Delivery, username_of: dict[str, str]) -> set[str]:
    return {username_of.get(address, address) for address in delivery.recipients}


def measure(
    *,
    signups: list[Signup],
    committed: set[str],
    deliveries: list[Delivery],
    worker_saw: set[str],
    held_in_redis: set[str],
    username_of: dict[str, str],
    committed_at: dict[str, float] | None = None,
) -> Outcome:
    """The cell's figures. ``username_of`` maps each signup's email address (lower-case) to its username;
    ``committed_at`` gives commit times that are better than the response times (``commit_times``)."""
    commit = committed_at or {}
    message_ids: dict[str, set[str]] = defaultdict(set)
    first_email: dict[str, float] = {}
    for delivery in deliveries:
        for username in _names(delivery, username_of):
            message_ids[username].add(delivery.message_id)
            first_email[username] = min(first_email.get(username, delivery.received_at), delivery.received_at)
    emailed_phantoms = {name for name in message_ids if name not in committed}
    accepted = [signup for signup in signups if signup.accepted]
    return Outcome(
        offered=len(signups),
        accepted=len(accepted),
        failed=len(signups) - len(accepted),
        statuses={str(status): n for status, n in sorted(Counter(s.status for s in signups).items())},
        committed=len(committed),
        delivered=sum(1 for name in committed if name in message_ids),
        emails=len(deliveries),
        lost=sum(1 for name in committed if name not in message_ids),
        phantom=len(((worker_saw | held_in_redis) - committed) | emailed_phantoms),
        phantom_emails=sum(1 for d in deliveries if _names(d, username_of) & emailed_phantoms),
        duplicates=sum(1 for name in committed if len(message_ids.get(name, ())) > 1),
        latency=latency_of(
            first_email[s.username] - commit.get(s.username, s.committed_at)
            for s in accepted
            if s.username in first_email
        ),
    )
