"""What a soak user who asks for new emails does: ``POST /v1/resend_verify_email``, some too soon, some not.

For a share of the accepted signups (``SoakPlan.resend_share``) the soak runs ``resend_script``: either a
burst of requests at once right after the signup's answer, which the per-user interval must refuse, or
(``resend_verify_share``) opening the first email's link first; then requests one at a time, each more than
the interval after the previous answer, which pass while the daily limit allows. The answer is the same
``202`` whatever happened (no enumeration), so what passed is judged afterwards from the database and the
SMTP sink (lab/soak/verdict.py), with these records saying what the limits must have allowed.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from dataclasses import dataclass
from email.message import Message
from typing import Literal

import httpx

from lab.harness.load import Signup
from lab.harness.smtp import SmtpSink
from lab.soak.plan import SoakPlan

Kind = Literal["repeat", "later", "verify"]

_LINK = re.compile(r"https?://\S+/v1/verify_email\?email_id=\d+&secret_code=[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Request:
    """One request a resending user made, and its answer."""

    username: str
    kind: Kind
    """``repeat``: one of the burst right after the signup; ``later``: one at a time after the interval;
    ``verify``: opening the first email's link."""
    status: int
    """HTTP status, or 0 when no response came."""
    sent_at: float
    answered_at: float
    """Wall-clock times (``time.time()``), comparable with PostgreSQL's ``now()`` on the same machine."""
    request_id: str
    """Sent as ``X-Request-ID``: the API logs its decision under it and stores it as the outbox event's
    ``trace_id``, so the verdict knows which request a counted resend came from."""
    retry_after: str | None = None


async def _send(client: httpx.AsyncClient, username: str, kind: Kind, url: str, email: str) -> Request:
    sent_at, retry_after, request_id = time.time(), None, uuid.uuid4().hex
    headers = {"X-Request-ID": request_id}
    try:
        if kind == "verify":
            response = await client.get(url, headers=headers)
        else:
            response = await client.post("/v1/resend_verify_email", json={"email": email}, headers=headers)
        status, retry_after = response.status_code, response.headers.get("retry-after")
    except httpx.HTTPError:
        status = 0
    return Request(username, kind, status, sent_at, time.time(), request_id, retry_after)


async def _first_link(sink: SmtpSink, email: str, *, timeout_s: float) -> str | None:
    """The link in the first email the sink received for ``email``, waiting up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for delivery in sink.snapshot():
            if email.lower() in delivery.recipients:
                text = delivery.message.get_payload(0)  # the text/plain part
                body = text.get_payload(decode=True) if isinstance(text, Message) else None
                if isinstance(body, bytes) and (found := _LINK.search(body.decode())):
                    return found.group(0)
        await asyncio.sleep(0.5)
    return None


async def resend_script(
    client: httpx.AsyncClient,
    signup: Signup,
    *,
    plan: SoakPlan,
    rng: random.Random,
    sink: SmtpSink,
    record: list[Request],
) -> None:
    """One user's requests after the accepted ``signup``, each appended to ``record`` as it is answered."""

    async def send(kind: Kind, url: str = "") -> Request:
        request = await _send(client, signup.username, kind, url, signup.email)
        record.append(request)
        return request

    last = signup.committed_at
    if rng.random() < plan.resend_verify_share:
        link = await _first_link(sink, signup.email, timeout_s=plan.drain_timeout_s)
        if link is not None:
            last = max(last, (await send("verify", link)).answered_at)
    else:
        burst = await asyncio.gather(*(send("repeat") for _ in range(plan.resend_repeats)))
        last = max([last, *(request.answered_at for request in burst)])
    interval = plan.resend_min_interval_s
    for _ in range(plan.resend_later):
        await asyncio.sleep(max(0.0, last + interval * rng.uniform(1.1, 1.6) - time.time()))
        last = (await send("later")).answered_at
