"""What a soak proves: exactly one email per outbox event (each signup's, each resend that passed the
limits), the limits kept, and nothing else went wrong.

Everything here is computed after the run from sources that do not trust each other: the database (which
users and outbox events committed, which resends were counted), the SMTP sink (what was delivered, each
email's ``Message-ID`` made from its event id), what the soak sent and was answered, and the services' logs.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from lab.harness.database import CountedResend
from lab.harness.load import Signup
from lab.harness.measure import latency_of
from lab.harness.smtp import Delivery
from lab.soak.resends import Request
from services.worker.emails import message_id_header


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
    events: int = 0
    """Outbox events: one per committed signup and one per resend that passed the limits."""
    resend_requests: Counter[str] = field(default_factory=Counter)
    """The soak's resend requests by kind and answer (``repeat 202``, ``later 503`` …) and link openings."""
    resend_outcomes: Counter[str] = field(default_factory=Counter)
    """What the API logged it did with each resend request: sent, rate_limited, verified, unknown."""
    resends_counted: int = 0
    """Resends that passed the limits (rows of verify_email_resends), each with an outbox event."""
    resend_emails: int = 0
    """Resend events whose email arrived."""
    resends_had_to_pass: int = 0
    """Later requests to an unverified address, under the daily limit and sent at least the interval after
    their user's last email: each must have counted a resend."""
    resends_refused_wrongly: list[str] = field(default_factory=list)
    resends_had_to_refuse: int = 0
    """Requests decided less than the interval after their user's ``created_at``: none may count one."""
    resends_passed_wrongly: list[str] = field(default_factory=list)
    resend_limit_broken: list[str] = field(default_factory=list)
    resends_undecided: list[str] = field(default_factory=list)
    """Requests answered ``202`` for which the API logged no decision: lost after their answer."""
    resends_misreported: list[str] = field(default_factory=list)
    """Requests whose logged outcome disagrees with whether a resend was counted for them."""
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
            "duplicates (emails no event of their user accounts for)": self.duplicates,
            "phantoms (email for no user)": self.phantoms,
            "resends the limits had to let through and did not": self.resends_refused_wrongly,
            "resends the interval had to refuse and did not": self.resends_passed_wrongly,
            "resend limits broken": self.resend_limit_broken,
            "resends answered 202 and never decided": self.resends_undecided,
            "resends logged as one outcome and counted as another": self.resends_misreported,
            "API errors other than 503 + Retry-After during the PostgreSQL restart": self.bad_api_errors,
            "unhandled errors in logs": self.log_problems,
            "services that exited by themselves": self.crashes,
        }
        return [f"{name}: {len(items)}, e.g. {items[:3]}" for name, items in named.items() if items]


def judge_mail(
    verdict: Verdict,
    *,
    users: dict[str, tuple[str, datetime]],
    events: dict[str, str],
    resends: dict[str, CountedResend],
    mail: list[Delivery],
) -> None:
    """Fill lost/duplicates/phantoms/delays from ``users`` (username → (email, created_at)), ``events``
    (every outbox event: id → username), ``resends`` (the counted resends: event id → (username, time)) and
    ``mail``. Each event must have its email (Message-ID from the event id; a redelivery of one message has
    the same and counts once); each counted resend its event; each user exactly one event that is no
    resend, their signup's."""
    by_email = {email.lower(): username for username, (email, _) in users.items()}
    owner = {message_id_header(event_id): username for event_id, username in events.items()}
    first: dict[str, float] = {}
    for delivery in mail:
        for recipient in delivery.recipients:
            username = by_email.get(recipient)
            if username is None:
                verdict.phantoms.append(recipient)
            elif owner.get(delivery.message_id) != username:
                verdict.duplicates.append(f"{username}: {delivery.message_id}")
            else:
                first[delivery.message_id] = min(
                    first.get(delivery.message_id, delivery.received_at), delivery.received_at
                )
    signups_of = Counter(username for event_id, username in events.items() if event_id not in resends)
    verdict.duplicates += [
        f"{name}: {count} signup events" for name, count in signups_of.items() if count > 1
    ]
    verdict.deliveries, verdict.events, verdict.resends_counted = len(mail), len(events), len(resends)
    verdict.resend_emails = sum(message_id_header(event_id) in first for event_id in resends)
    verdict.lost = sorted(f"{name}: {mid}" for mid, name in owner.items() if mid not in first)
    verdict.lost += sorted(set(users) - set(signups_of))
    verdict.lost += sorted(
        f"{name}: a counted resend without its event" for e, (name, *_) in resends.items() if e not in events
    )
    signup_mail = [
        first[message_id_header(event_id)] - users[name][1].timestamp()
        for event_id, name in events.items()
        if event_id not in resends and message_id_header(event_id) in first
    ]
    delays = latency_of(signup_mail)
    verdict.worst_delay_s, verdict.p99_delay_s = delays.max or 0.0, delays.p99 or 0.0


def judge_api(
    verdict: Verdict,
    signups: list[Signup],
    resends: list[Request],
    *,
    outage: tuple[float, float] | None,
) -> None:
    """Every answer must be the expected one (200 for a signup or a link, 202 for a resend), or a 503 with
    Retry-After while PostgreSQL was down.

    ``outage`` is the wall-clock window (``time.time()``) in which 503s are expected.
    """
    verdict.p99_api_latency_s = latency_of(s.committed_at - s.sent_at for s in signups).p99 or 0.0
    answers: list[tuple[str, int, int, str | None, float]] = [
        (s.username, 200, s.status, s.retry_after, s.committed_at) for s in signups
    ]
    for request in resends:
        verdict.resend_requests[f"{request.kind} {request.status or 'no response'}"] += 1
        expected = 200 if request.kind == "verify" else 202
        answers.append((request.username, expected, request.status, request.retry_after, request.answered_at))
    for signup in signups:
        verdict.api_answers[str(signup.status or "no response")] += 1
    for username, expected, status, retry_after, at in answers:
        in_outage = outage is not None and outage[0] <= at <= outage[1]
        if status != expected and (status != 503 or not retry_after or not in_outage):
            verdict.bad_api_errors.append(f"{username}: {status} at {at:.1f}")


def judge_resends(
    verdict: Verdict,
    *,
    requests: list[Request],
    decisions: dict[str, Decision],
    users: dict[str, tuple[str, datetime]],
    resends: dict[str, CountedResend],
    verified: set[str],
    min_interval_s: float,
    max_per_day: int,
) -> None:
    """The limits, both ways, from the counted resends and, separately, from the soak's clock.

    In the database: no counted resend sooner than ``min_interval_s`` after the user's signup or previous
    resend, nor more than ``max_per_day``. Per request: the API answers a resend before it decides (and
    tries again while PostgreSQL is down), so each ``202`` must have a logged decision (``decisions``, by
    the ``X-Request-ID`` the soak sent), and a counted resend is the request's whose id its outbox event
    carries. The decision's ``now()`` lies between the request's sending and its log line (PostgreSQL's
    clock is the soak's). A request decided less than the interval after its user's ``created_at`` had to
    be refused; a ``later`` request to an unverified address sent at least the interval after its user's
    last email counted before the decision's log line, with fewer than ``max_per_day`` counted, had to pass.
    """
    times: dict[str, list[float]] = defaultdict(list)
    counted_for: dict[str, float] = {}
    for username, at, request_id in resends.values():
        times[username].append(at.timestamp())
        if request_id is not None:
            counted_for[request_id] = at.timestamp()
    for username, counted in times.items():
        counted.sort()
        if len(counted) > max_per_day:
            verdict.resend_limit_broken.append(f"{username}: {len(counted)} resends in a day")
        since = [users[username][1].timestamp(), *counted]
        gaps = [b - a for a, b in itertools.pairwise(since)]
        if gaps and min(gaps) < min_interval_s:
            verdict.resend_limit_broken.append(
                f"{username}: a resend {min(gaps):.2f} s after the previous email"
            )
    for request in requests:
        if request.status != 202:
            continue
        name = f"{request.username} at {request.sent_at:.1f}"
        decision = decisions.get(request.request_id)
        if decision is None:
            verdict.resends_undecided.append(name)
            continue
        passed = request.request_id in counted_for
        if passed != (decision.outcome == "sent"):
            verdict.resends_misreported.append(f"{name}: logged {decision.outcome}, counted: {passed}")
        created = users[request.username][1].timestamp()
        if decision.logged_at < created + min_interval_s:
            verdict.resends_had_to_refuse += 1
            if passed:
                verdict.resends_passed_wrongly.append(name)
            continue
        own = counted_for.get(request.request_id)
        before = [at for at in times.get(request.username, []) if at < decision.logged_at and at != own]
        if (
            request.kind == "later"
            and request.username not in verified
            and len(before) < max_per_day
            and max([created, *before]) + min_interval_s <= request.sent_at
        ):
            verdict.resends_had_to_pass += 1
            if not passed:
                verdict.resends_refused_wrongly.append(name)


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


class Decision(NamedTuple):
    """What the API logged it did with one resend request, and when (``time.time()``'s clock)."""

    outcome: str
    logged_at: float


def resend_decisions(verdict: Verdict, api_log: list[str]) -> dict[str, Decision]:
    """Each resend request's decision by its request id, counted by outcome (the answer is the same
    whatever it did)."""
    decisions: dict[str, Decision] = {}
    for line in api_log:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "verification email resend requested":
            outcome = str(record.get("outcome"))
            verdict.resend_outcomes[outcome] += 1
            logged_at = datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()
            decisions[str(record.get("request_id"))] = Decision(outcome, logged_at)
    return decisions


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
