"""docs/RELIABILITY.md: the figures of the last full soak and how they were obtained."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from lab.soak.plan import SoakPlan
from lab.soak.verdict import Verdict


def write_report(verdict: Verdict | None, *, plan: SoakPlan, path: Path, run: str = "") -> None:
    """Write the soak's figures (or, with no verdict, the method alone) as Markdown to ``path``.

    ``run`` says how and where the figures were made (command, machine, duration, load).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    table = _table(verdict, plan=plan) if verdict else _PENDING
    path.write_text(
        _TEMPLATE.format(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            table=f"{run}\n\n{table}" if run else table,
            kill_every=f"{plan.kill_every_s[0]:g} to {plan.kill_every_s[1]:g} s",
            down_for=f"{plan.down_for_s[0]:g} to {plan.down_for_s[1]:g} s",
            ratio=f"{plan.smtp_fail_ratio:.0%}",
            kills_until=f"{plan.kills_until:.0%}",
            postgres_at=f"{plan.postgres_at:.0%}",
            redis_at=f"{plan.redis_at:.0%}",
            flushall_at=f"{plan.flushall_at:.0%}",
            wipe_at=f"{plan.redis_wipe_at:.0%}",
            grace=f"{plan.outage_grace_s:g} s",
            drain=f"{plan.drain_timeout_s:g} s",
            resend_share=f"{plan.resend_share:.0%}",
            verify_share=f"{plan.resend_verify_share:.0%}",
            repeats=plan.resend_repeats,
            later=plan.resend_later,
            interval=f"{plan.resend_min_interval_s} s",
            per_day=plan.resend_max_per_day,
        )
    )


def _table(verdict: Verdict, *, plan: SoakPlan) -> str:
    faults = "; ".join(f"{name}: {count}" for name, count in sorted(verdict.faults.items()))
    answers = ", ".join(f"{status}: {count}" for status, count in sorted(verdict.api_answers.items()))
    handled = ", ".join(f"{name}: {count}" for name, count in sorted(verdict.handled_errors.items()))
    requests = ", ".join(f"{kind}: {count}" for kind, count in sorted(verdict.resend_requests.items()))
    outcomes = ", ".join(f"{name}: {count}" for name, count in sorted(verdict.resend_outcomes.items()))
    resends = sum(count for kind, count in verdict.resend_requests.items() if not kind.startswith("verify"))
    rows = [
        ("signups sent", f"{verdict.signups_sent} at {plan.rate:g}/s"),
        ("signups committed", str(verdict.committed)),
        ("API answers", answers),
        ("API latency, p99", f"{verdict.p99_api_latency_s:.2f} s"),
        ("faults injected", faults),
        ("SMTP attempts answered 451", f"{verdict.smtp_refused} of {verdict.smtp_attempts}"),
        ("resend requests (and links opened first), by kind and answer", f"{resends} ({requests or 'none'})"),
        ("resend requests by what the API logged it did", outcomes or "none"),
        ("resends counted (passed the limits), each an outbox event", str(verdict.resends_counted)),
        (
            "resend emails received (distinct Message-IDs)",
            f"{verdict.resend_emails} of {verdict.resends_counted}",
        ),
        (
            "requests the interval had to refuse / that counted one anyway",
            f"{verdict.resends_had_to_refuse} / {len(verdict.resends_passed_wrongly)}",
        ),
        (
            "requests the limits had to let through / that counted none",
            f"{verdict.resends_had_to_pass} / {len(verdict.resends_refused_wrongly)}",
        ),
        ("resend limits broken (too soon, too many)", str(len(verdict.resend_limit_broken))),
        (
            "resends answered 202 and never decided / decided unlike the database",
            f"{len(verdict.resends_undecided)} / {len(verdict.resends_misreported)}",
        ),
        ("outbox events (signups and counted resends)", str(verdict.events)),
        ("emails received (redeliveries of one message included)", str(verdict.deliveries)),
        ("lost (outbox event, no email)", str(len(verdict.lost))),
        ("duplicates (email with a Message-ID none of its user's events has)", str(len(verdict.duplicates))),
        ("phantoms (email for no committed user)", str(len(verdict.phantoms))),
        ("outbox rows left unpublished", str(verdict.unpublished)),
        ("messages Redis lost, re-published by reconciliation", str(verdict.republished)),
        ("commit → email delay, p99 / worst", f"{verdict.p99_delay_s:.2f} s / {verdict.worst_delay_s:.2f} s"),
        ("unhandled exceptions or raw emails in logs", str(len(verdict.log_problems))),
        ("handled error/critical log lines", handled or "0"),
        ("services that exited by themselves", str(len(verdict.crashes))),
        ("verdict", "promise kept" if verdict.ok else "FAILED: " + " | ".join(verdict.problems())),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


_PENDING = (
    "No full run yet: `signup relay` and `signup worker` were not on this branch when it was written. "
    "Run `just soak` to fill this table."
)


_TEMPLATE = """# Reliability: the soak

The promise: **every committed signup, and every resend the limits let through, gets exactly one email, and
no one gets in where they should not.**
`just soak` checks the first half under faults (the second is tests/integration/test_security.py and
tests/integration/test_fuzz_api.py); this file was written by `signup soak` ({date}). A 60-second
version (200 signups, the same faults) runs in `just test` as tests/e2e/test_soak.py.

## Figures

{table}

## How

`signup soak` starts a private PostgreSQL cluster (`initdb` + `pg_ctl`, never the shared one), a
private Redis with an append-only file (`appendfsync always`), an SMTP sink, and `signup api`, `signup relay`
and `signup worker` as subprocesses. It then sends signups over HTTP at a steady rate, never waiting for
answers, while it:

- SIGKILLs the relay and the worker (each whole process group) after random pauses of {kill_every}, and
  starts them again {down_for} later, for the first {kills_until} of the load;
- crashes PostgreSQL once, {postgres_at} of the way through (`pg_ctl stop -m immediate`), and starts it
  again;
- SIGKILLs Redis once, {redis_at} of the way through, after the last kill (so that no worker restart can
  rescue a message a live worker stranded), and starts it again on its append-only file;
- makes Redis lose its data twice while the kills go on: a `FLUSHALL` {flushall_at} of the way through,
  and at {wipe_at} a SIGKILL and a restart with its data files deleted (as a Redis without persistence
  restarts), each at the first worker kill after that point, while the worker is down, so that the loss
  takes a backlog (and what the worker held) with it; the relay's reconciliation must
  publish again what was lost (RECONCILE_GRACE_MS 10 s and RECONCILE_INTERVAL_MS 2 s here), and the worst
  delay below includes it;
- has the SMTP server answer `451` to {ratio} of delivery attempts, at random.

Meanwhile {resend_share} of the users whose signup was answered `200` ask for new emails
(`POST /v1/resend_verify_email`, lab/soak/resends.py), with the API's limits set to one per {interval}
(`RESEND_MIN_INTERVAL_S`, 60 s in production) and {per_day} a day (`RESEND_MAX_PER_DAY`): {repeats} requests
at once right after the signup's answer, which the interval must refuse (the signup's email counts as the
first), or, for {verify_share} of them, opening the first email's link instead; then {later} requests one
at a time, each more than the interval after the previous answer, which pass while the daily limit allows
and the address is unverified. Every answer is the same `202`, whatever happened.

When the load ends, every service is running again; the soak waits until each outbox event has its email
(at most {drain}), then judges from sources that do not trust each other:

- **the database** (the users and outbox events that committed, the resends counted in
  `verify_email_resends`) against **the SMTP sink** (what arrived): each outbox event, the signup's and each
  counted resend's, must have its email, whose `Message-ID` is made from the event id; a redelivery of the
  same message (a worker killed between the send and its commit) carries the same `Message-ID` and counts
  once; an email with a `Message-ID` none of its user's events has is a duplicate, and so is a second
  signup event; an email to an address no committed user has is a phantom;
- **the resend requests** against **the counted resends**: none sooner than the interval after the user's
  signup or previous resend and none beyond the daily limit. Each request carries an `X-Request-ID`, which
  the API logs with its decision and stores as the outbox event's `trace_id`, so a counted resend belongs
  to exactly one request. The API answers before it decides (and tries again while PostgreSQL is down), so
  every `202` must have a logged decision, and the decision must agree with the database; on the soak's
  clock, no resend counted for a request decided within the interval after its user's `created_at`, and
  one counted for each request that had to pass (sent at least the interval after its user's last email
  counted before the decision, under the daily limit, address unverified);
- **the HTTP answers**: apart from `200` (`202` for a resend), only `503` with `Retry-After` is allowed,
  and only while PostgreSQL is down (until {grace} after it is back). A signup answered `503` may still
  have committed (the crash can hit between the commit and the answer); it is judged by the table, like
  every other;
- **the services' logs**: no unhandled exception (a raw traceback on stderr, the API's "unhandled error",
  Dramatiq's "Failed to process message … with unhandled exception") and no user's raw email address.
  Failures that were handled (logged with what failed, then retried) are counted, not failed: Dramatiq logs
  a lost Redis connection at critical level and reconnects.

## What it relies on

- Not on Redis keeping its data: a message Redis loses after the relay published it is found by the
  relay's reconciliation (the outbox row is published, not handled, and its locator finds the message
  nowhere in Redis) and published again under the same message id (docs/DESIGN.md §13); the worker's
  idempotency makes a needless re-publish harmless.
- A killed worker's unacknowledged messages are handed to another worker once its process's heartbeat is
  10 s old, at that worker's next look for dead consumers (every 5 s): 10 to 16 s after the kill, which shows
  in the worst delay (docs/DESIGN.md §5).

## What the soak found

- Fixed: while PostgreSQL recovered from the crash, signups were answered `500`: asyncpg raises "the
  database system is not yet accepting connections" (SQLSTATE 57P03) as a plain `DBAPIError`.
  services/api/error_handlers.py now answers `503` + `Retry-After` for SQLSTATE classes 08, 53 and 57.
- Fixed, in the broker built on Dramatiq's stock Redis broker that the present one replaced: messages held
  by a SIGKILLed worker waited for a maintenance pass that almost never ran, and a worker whose Redis
  restarted dropped the messages it held while Redis still listed them as held by a live worker (a short
  soak lost 1 email of 114). The present broker hands a dead process's messages to a live one by its
  heartbeat, and every new consumer re-reads its process's unacknowledged messages (see the next item);
  the soak still restarts Redis after the last kill to show that nothing is stranded.
- Fixed: a 10,000-signup soak (2026-12-07, commit 60f670e) lost 1 email of 11,528. A retry's backoff came
  due just as Redis was SIGKILLed: Dramatiq's consumer thread took the message out of its in-memory delay
  queue, failed to enqueue it, and dropped its consumer, which could not hand the message back. The error
  came from the thread, not from the consumer, so nothing asked the next consumer to read the process's
  pending messages again; the message stayed pending for the live worker in Redis (so reconciliation left
  it) until the worker stopped. Every consumer now begins with that re-read
  (tests/integration/test_broker.py kills Redis at the hand-over).
"""
