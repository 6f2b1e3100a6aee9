"""What a soak proves: for each committed user exactly one distinct Message-ID, and nothing else went wrong.

Everything here is computed after the run from three sources that do not trust each other: the users
table (what committed), the SMTP sink (what was delivered) and the services' logs.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from lab.harness.load import Signup
from lab.harness.measure import latency_of
from lab.harness.smtp import Delivery


@dataclass
class Verdict:
    """The figures of one soak; ``ok`` holds when the promise was kept."""

    signups_sent: int = 0
    committed: int = 0
    api_answers: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    smtp_attempts: int = 0
    smtp_refused: int = 0
    deliveries: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    phantoms: list[str] = field(default_factory=list)
    bad_api_errors: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    handled_errors: Counter[str] = field(default_factory=Counter)
    """Error/critical log lines per service that named a failure which was then handled (retried)."""
    unpublished: int = 0
    republished: int = 0
    """Messages Redis lost that reconciliation published again (re-publishes, summed over outbox rows)."""
    worst_delay_s: float = 0.0
    p99_delay_s: float = 0.0
    p99_api_latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        named = {
            "lost (no email)": self.lost,
            "duplicates (several Message-IDs)": self.duplicates,
            "phantoms (email for no user)": self.phantoms,
            "API errors other than 503 + Retry-After during the PostgreSQL restart": self.bad_api_errors,
            "unhandled errors in logs": self.log_problems,
            "services that exited by themselves": self.crashes,
        }
        return [f"{name}: {len(items)}, e.g. {items[:3]}" for name, items in named.items() if items]


def judge_mail(verdict: Verdict, *, users: dict[str, tuple[str, datetime]], mail: list[Delivery]) -> None:
    """Fill lost/duplicates/phantoms/delays from ``users`` (username → (email, created_at)) and ``mail``."""
    by_email = {email.lower(): username for username, (email, _) in users.items()}
    ids: dict[str, set[str]] = defaultdict(set)
    first: dict[str, float] = {}
    for delivery in mail:
        for recipient in delivery.recipients:
            username = by_email.get(recipient)
            if username is None:
                verdict.phantoms.append(recipient)
                continue
            ids[username].add(delivery.message_id)
            first[username] = min(first.get(username, delivery.received_at), delivery.received_at)
    verdict.deliveries = len(mail)
    verdict.lost = sorted(set(users) - set(ids))
    verdict.duplicates = sorted(name for name, found in ids.items() if len(found) > 1)
    delays = latency_of(first[name] - users[name][1].timestamp() for name in first)
    verdict.worst_delay_s, verdict.p99_delay_s = delays.max or 0.0, delays.p99 or 0.0


def judge_api(verdict: Verdict, signups: list[Signup], *, outage: tuple[float, float] | None) -> None:
    """Every answer but 200 must be a 503 with Retry-After while PostgreSQL was down.

    ``outage`` is the wall-clock window (``time.time()``) in which 503s are expected.
    """
    verdict.p99_api_latency_s = latency_of(s.committed_at - s.sent_at for s in signups).p99 or 0.0
    for signup in signups:
        verdict.api_answers[str(signup.status or "no response")] += 1
        if signup.status == 200:
            continue
        in_outage = outage is not None and outage[0] <= signup.committed_at <= outage[1]
        if signup.status != 503 or not signup.retry_after or not in_outage:
            verdict.bad_api_errors.append(f"{signup.username}: {signup.status} at {signup.committed_at:.1f}")


_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
# How our code and Dramatiq's name an exception nobody handled: the API's "unhandled error", Dramatiq's
# "Failed to process message … with unhandled exception", "Consumer encountered an unexpected error".
_UNHANDLED = re.compile(r"unhandled|uncaught|unexpected error", re.IGNORECASE)
_EMAIL_LIKE = re.compile(r"[\w.'%+-]+@[\w.-]+")


def judge_logs(verdict: Verdict, logs: dict[str, list[str]], *, emails: set[str]) -> None:
    """Flag unhandled exceptions and any user's raw email address; count error lines that were handled.

    A handled failure (a warning or error naming what failed, then a retry) is expected under faults:
    Dramatiq itself logs a lost Redis connection at critical level and reconnects.
    """
    for service, lines in logs.items():
        for line in lines:
            problem, level = _log_problem(line)
            if problem is None and any(found.lower() in emails for found in _EMAIL_LIKE.findall(line)):
                problem = "a raw email address"
            if problem:
                verdict.log_problems.append(f"{service}: {problem}: {line[:300]}")
            elif level in ("error", "critical"):
                verdict.handled_errors[service] += 1


def _log_problem(line: str) -> tuple[str | None, str | None]:
    try:
        record = json.loads(line)
    except ValueError:
        return ("an unstructured traceback" if _TRACEBACK.search(line) else None), None
    if not isinstance(record, dict):
        return None, None
    level = record.get("level")
    if _UNHANDLED.search(str(record.get("event", ""))) and not _redis_connection_lost(record):
        return "an unhandled exception", level
    return None, level


def _redis_connection_lost(record: dict[str, object]) -> bool:
    """Dramatiq's consumer moves due delayed messages outside its connection-error handling, so a Redis
    restart surfaces as "Consumer encountered an unexpected error." It then restarts the consumer, and the
    message is still in Redis: that is handled, by the library."""
    last_line = str(record.get("exception", "")).rstrip().rsplit("\n", 1)[-1]
    return last_line.startswith(("redis.exceptions.ConnectionError", "redis.exceptions.TimeoutError"))
