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
  the timestamp of the API's log line marked ``committed``, written right after the commit; where that line
  is missing, the time the 200 response arrived (the API answers only after the commit). Every clock is
  this machine's wall clock. The log line is preferred because on a busy machine the response can lag the
  commit by a second or more, which would shorten every latency by as much.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

from lab.harness.load import Signup
from lab.harness.measure import Latency, latency_of
from lab.harness.smtp import Delivery


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
