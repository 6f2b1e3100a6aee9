"""The resend use case: a new verification email on request, within limits, telling no one who exists.

The answer does not wait for the address: the route hands the request to ``ResendQueue`` and answers
``202`` at once, and the use case runs after, in a task of its own (DESIGN §8). What the use case does for a
known address (a row lock, a commit that writes) therefore shows in no answer's timing. It still runs the
same two statements in one transaction whatever the address: lock the user row (if any), then one statement
that decides, counts and writes the outbox row (if sent). Only the log line and
``resend_requests_total{outcome}`` (served on the metrics port, not the public one) tell outcomes apart.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Literal

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.database import database_unavailable
from shared.logging import get_logger
from shared.messages import SendVerifyEmail
from shared.settings import Settings
from shared.telemetry import current_trace_context

log = get_logger()

Outcome = Literal["sent", "rate_limited", "verified", "unknown"]

RESENDS = Counter("resend_requests_total", "POST /v1/resend_verify_email by what it did", ["outcome"])

# The lock is its own statement: under READ COMMITTED each statement takes a fresh snapshot, so the decision
# below, made after a concurrent request's commit released the row, sees that request's count. In one
# statement it would read the snapshot from before the wait, and both requests would pass.
_LOCK = sa.text("SELECT 1 FROM users WHERE lower(email) = lower(:email) FOR UPDATE")

# The outbox row is written here rather than by the Dispatcher: the insert runs (and its statement-level
# NOTIFY trigger fires) for every outcome, with zero rows when nothing is sent, so no outcome is cheaper.
# Its payload is SendVerifyEmail's ({"username": …}); a resend is the same command as the first email.
_DECIDE = sa.text(
    """
    WITH target AS (
        -- the verified account, else the newest unverified claim younger than UNVERIFIED_ACCOUNT_TTL_HOURS
        SELECT username, is_email_verified, created_at FROM users
        WHERE lower(email) = lower(:email)
            AND (is_email_verified OR created_at > now() - make_interval(hours => :unverified_ttl_h))
        ORDER BY is_email_verified DESC, created_at DESC
        LIMIT 1
    ), recent AS (
        SELECT count(*) AS today, max(r.requested_at) AS last
        FROM verify_email_resends r JOIN target USING (username)
        WHERE r.requested_at > now() - interval '1 day'
    ), decision AS (
        SELECT target.username, CASE
            WHEN target.is_email_verified THEN 'verified'
            WHEN recent.today >= :max_per_day
                -- the signup's own email counts as the first of the interval
                OR greatest(recent.last, target.created_at) > now() - make_interval(secs => :min_interval_s)
                THEN 'rate_limited'
            ELSE 'sent' END AS outcome
        FROM target CROSS JOIN recent
    ), counted AS (
        INSERT INTO verify_email_resends (username, event_id)
        SELECT username, :event_id FROM decision WHERE outcome = 'sent'
        RETURNING username
    ), queued AS (
        INSERT INTO outbox (event_id, actor, queue, payload, trace_id, trace_context)
        SELECT :event_id, :actor, :queue, jsonb_build_object('username', username), :trace_id,
               CAST(CAST(:trace_context AS text) AS jsonb)
        FROM counted
    )
    SELECT decision.username, coalesce(decision.outcome, 'unknown') AS outcome
    FROM (SELECT 1) AS one LEFT JOIN decision ON true
    """
)


async def resend_verify_email(
    sessions: async_sessionmaker[AsyncSession], *, email: str, settings: Settings, trace_id: str | None
) -> Outcome:
    """Queue a new verification email for ``email`` if it is an unverified user's and within the limits.

    Returns what happened; the caller answers the same whatever it is. Database errors propagate.
    """
    params = {
        "email": email,
        "event_id": uuid.uuid4(),
        "actor": SendVerifyEmail.actor,
        "queue": SendVerifyEmail.queue,
        "trace_id": trace_id,
        # The request's W3C context, as add_outbox_event stores it (DESIGN §12); NULL without tracing.
        "trace_context": None if (context := current_trace_context()) is None else json.dumps(context),
        "max_per_day": settings.resend_max_per_day,
        "min_interval_s": settings.resend_min_interval_s,
        "unverified_ttl_h": settings.unverified_account_ttl_hours,
    }
    async with sessions() as session, session.begin():
        await session.execute(_LOCK, {"email": email})
        row = (await session.execute(_DECIDE, params)).one()
    outcome: Outcome = row.outcome
    RESENDS.labels(outcome=outcome).inc()
    log.info("verification email resend requested", outcome=outcome, username=row.username)
    return outcome


class ResendBusy(Exception):
    """``API_RESEND_MAX_PENDING`` resend requests are waiting to run: answered ``503`` + ``Retry-After``."""


RETRY_FOR_S = 60.0
"""How long a resend answered ``202`` is tried again while the database is unavailable."""


class ResendQueue:
    """Runs resend requests after their answer, at most ``limit`` at once in flight.

    ``submit`` returns False when ``limit`` requests are pending: the route then answers ``503`` with
    ``Retry-After``, for every address alike. A request whose database is down or restarting is tried again
    for up to ``RETRY_FOR_S``; one that still fails, or fails otherwise, is logged and lost: the person asks
    again.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings, *, limit: int) -> None:
        self._sessions = sessions
        self._settings = settings
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, *, email: str, trace_id: str | None) -> bool:
        if len(self._tasks) >= self._limit:
            return False
        # The task copies the request's context: its log lines and trace context are the request's.
        task = asyncio.create_task(self._run(email, trace_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, email: str, trace_id: str | None) -> None:
        # A 202 was promised: while the database is down or restarting, try again (its transaction did not
        # commit, and a retry that follows a commit whose answer was lost is refused by the interval).
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + RETRY_FOR_S, 0.1
        while True:
            try:
                await resend_verify_email(
                    self._sessions, email=email, settings=self._settings, trace_id=trace_id
                )
                return
            except Exception as exc:
                if not database_unavailable(exc) or loop.time() + delay > deadline:
                    log.warning("verification email resend failed", error=type(exc).__name__)
                    return
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    @property
    def pending(self) -> int:
        """Requests answered and not yet run."""
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until every submitted request has run (tests; the API's shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
