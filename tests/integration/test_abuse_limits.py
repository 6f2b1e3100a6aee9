"""Abuse limits: per client on signup and resend (429 + Retry-After), per mailbox on what the worker sends,
and a full name that cannot pass for the sender's own words (DESIGN §8)."""

from __future__ import annotations

import re

import msgspec
import pytest

from tests.support import RecordingMailer, render, serving, signup_body, worker_sends


@pytest.mark.parametrize("route", ["create_user", "resend_verify_email"])
async def test_one_client_gets_429_with_retry_after_and_others_are_served(settings, db, route) -> None:
    limited = msgspec.structs.replace(
        settings,
        api_client_signups_per_hour=2,
        api_client_resends_per_hour=2,
        api_trusted_proxies="127.0.0.1",  # the test's proxy: X-Forwarded-For names the client
    )

    def body(n: int) -> dict[str, object]:
        if route == "create_user":
            return signup_body(username=f"user_{n}", email=f"user{n}@example.com")
        return {"email": f"user{n}@example.com"}

    async with serving(limited) as http:
        mallory = {"X-Forwarded-For": "198.51.100.66"}
        answers = [await http.post(f"/v1/{route}", json=body(n), headers=mallory) for n in range(3)]
        assert [answer.status_code for answer in answers] == [200 if route == "create_user" else 202] * 2 + [
            429
        ]
        assert 0 < int(answers[2].headers["retry-after"]) <= 1800
        # Another client, and the same one forging a new X-Forwarded-For hop in front: only the first is new.
        other = await http.post(f"/v1/{route}", json=body(9), headers={"X-Forwarded-For": "203.0.113.5"})
        assert other.status_code != 429
        forged = {"X-Forwarded-For": "203.0.113.99, 198.51.100.66"}
        assert (await http.post(f"/v1/{route}", json=body(8), headers=forged)).status_code == 429


SPELLINGS = [
    "alice@gmail.com",
    "Alice@Gmail.com",
    "a.l.i.c.e@gmail.com",
    "alice+promo@googlemail.com",
    "ALICE+x@gmail.com",
]


async def test_one_mailbox_gets_at_most_the_daily_cap_whatever_the_spelling(client, db, settings) -> None:
    capped = msgspec.structs.replace(settings, mailbox_max_emails_per_day=3)
    mailer = RecordingMailer()
    for n, address in enumerate([*SPELLINGS, "bob@gmail.com"]):
        body = signup_body(username=f"user_{n}", email=address)
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
        await worker_sends(db, capped, username=f"user_{n}", mailer=mailer)
    # Three of Alice's five spellings got theirs; Bob, at the same provider, is another mailbox.
    sent_to = [str(mail["To"]).lower() for mail in mailer.sent]
    assert sent_to == [address.lower() for address in [*SPELLINGS[:3], "bob@gmail.com"]]


async def test_the_full_name_is_quoted_as_the_name_given_not_used_as_a_greeting(settings) -> None:
    name = "Your bank. Call 555-0100 now"
    email = render("verify_email", "en", settings=settings, full_name=name)
    for part in ("plain", "html"):
        body = email.get_body((part,))
        assert body is not None
        # The HTML quotes the name isolated (<bdi>): what a reader sees is the text between the tags.
        text = re.sub(r"<[^>]+>", "", str(body.get_content()))
        first = next(line for line in text.splitlines() if line.strip())
        assert name not in first  # the greeting is ours alone
        assert f"opened with the name “{name}”" in text or f'opened with the name "{name}"' in text
