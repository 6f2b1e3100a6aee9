"""The soak's verdict on resends, on made-up records: what it must call lost, duplicated or a broken limit.

tests/e2e/test_soak.py runs the real thing; these show that its verdict fails when a resend's email is
dropped or doubled, or when the limits let through what they had to refuse, or refuse what they had to
let through, which a run that keeps the promise never shows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from lab.harness.database import CountedResend
from lab.harness.smtp import Delivery
from lab.soak.resends import Kind, Request
from lab.soak.verdict import Decision, Verdict, judge_mail, judge_resends
from services.worker.emails import message_id_header

T0 = 1_800_000_000.0
USERS = {"ana": ("ana@lab.example", datetime.fromtimestamp(T0, UTC))}
SIGNUP_EVENT, RESEND_EVENT = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
EVENTS = {SIGNUP_EVENT: "ana", RESEND_EVENT: "ana"}
RESENDS = {RESEND_EVENT: CountedResend("ana", datetime.fromtimestamp(T0 + 10, UTC), "r1")}


def mail(*event_ids: str, to: str = "ana@lab.example") -> list[Delivery]:
    return [Delivery((to,), message_id_header(event_id), T0 + 1 + n) for n, event_id in enumerate(event_ids)]


def judged_mail(deliveries: list[Delivery], events: dict[str, str] = EVENTS) -> Verdict:
    verdict = Verdict()
    judge_mail(verdict, users=USERS, events=events, resends=RESENDS, mail=deliveries)
    return verdict


def test_one_email_per_event_a_redelivery_counted_once() -> None:
    verdict = judged_mail(mail(SIGNUP_EVENT, RESEND_EVENT, RESEND_EVENT))
    assert verdict.ok and verdict.resend_emails == verdict.resends_counted == 1 and verdict.events == 2


def test_a_resend_without_its_email_is_lost() -> None:
    verdict = judged_mail(mail(SIGNUP_EVENT))
    assert verdict.lost == [f"ana: {message_id_header(RESEND_EVENT)}"] and verdict.resend_emails == 0


def test_a_counted_resend_without_its_event_is_lost() -> None:
    verdict = judged_mail(mail(SIGNUP_EVENT), {SIGNUP_EVENT: "ana"})
    assert verdict.lost == ["ana: a counted resend without its event"]


def test_a_doubled_resend_is_a_duplicate() -> None:
    # A second email for the resend under another Message-ID, or a second event the limits never counted.
    stray = "00000000-0000-4000-8000-000000000003"
    assert judged_mail(mail(SIGNUP_EVENT, RESEND_EVENT, stray)).duplicates
    assert judged_mail(mail(SIGNUP_EVENT, RESEND_EVENT, stray), {**EVENTS, stray: "ana"}).duplicates


def test_an_email_for_nobody_is_a_phantom() -> None:
    assert judged_mail(mail(SIGNUP_EVENT, RESEND_EVENT) + mail(RESEND_EVENT, to="eve@lab.example")).phantoms


Counted = tuple[Request, float]
"""A request whose resend the database counted, and when."""


def judged_resends(
    requests: list[Request], counted: list[Counted], decided_at: dict[str, float] | None = None
) -> Verdict:
    """``requests`` judged against ``counted``; each request decided (logged) 0.1 s after it was sent, after
    its resend was counted, unless ``decided_at`` (request id → time) says otherwise or leaves it out
    (``-1``)."""
    verdict = Verdict()
    resends = {
        f"e{n}": CountedResend("ana", datetime.fromtimestamp(at, UTC), request.request_id)
        for n, (request, at) in enumerate(counted)
    }
    passed = {request.request_id for request, _ in counted}
    decisions = {
        r.request_id: Decision("sent" if r.request_id in passed else "rate_limited", at)
        for r in requests
        if (at := (decided_at or {}).get(r.request_id, r.sent_at + 0.1)) >= 0
    }
    judge_resends(
        verdict,
        requests=requests,
        decisions=decisions,
        users=USERS,
        resends=resends,
        verified=set(),
        min_interval_s=5,
        max_per_day=2,
    )
    return verdict


def request(kind: Kind, sent_at: float, request_id: str) -> Request:
    return Request("ana", kind, 202, sent_at, sent_at + 0.1, request_id)


REPEAT = request("repeat", T0 + 0.3, "repeat")
LATER = request("later", T0 + 6.0, "later")


def test_limits_kept_both_ways() -> None:
    verdict = judged_resends([REPEAT, LATER], [(LATER, T0 + 6.05)])
    assert verdict.ok and verdict.resends_had_to_refuse == 1 and verdict.resends_had_to_pass == 1


def test_a_resend_decided_late_counts_for_its_own_request() -> None:
    """The API answers before it decides and tries again while PostgreSQL is down: a request held up
    past its user's next one, which then passes first, was rightly refused."""
    next_one = request("later", T0 + 9.5, "next")
    verdict = judged_resends(
        [LATER, next_one], [(next_one, T0 + 9.55)], decided_at={"later": T0 + 11.0, "next": T0 + 9.6}
    )
    assert verdict.ok and verdict.resends_had_to_pass == 1


def test_a_refused_request_that_had_to_pass_is_found() -> None:
    verdict = judged_resends([REPEAT, LATER], [])
    assert verdict.resends_refused_wrongly and not verdict.ok


def test_a_resend_counted_for_another_request_does_not_excuse_a_refusal() -> None:
    other = request("repeat", T0 + 5.9, "other")
    verdict = judged_resends([other, LATER], [(other, T0 + 6.2)], decided_at={"other": T0 + 6.25})
    assert verdict.resends_refused_wrongly == [f"ana at {LATER.sent_at:.1f}"]


def test_a_resend_too_soon_is_found() -> None:
    verdict = judged_resends([REPEAT, LATER], [(REPEAT, T0 + 0.35), (LATER, T0 + 6.05)])
    assert verdict.resends_passed_wrongly and verdict.resend_limit_broken


def test_an_answered_request_never_decided_is_found() -> None:
    verdict = judged_resends([REPEAT, LATER], [(LATER, T0 + 6.05)], decided_at={"repeat": -1})
    assert verdict.resends_undecided == [f"ana at {REPEAT.sent_at:.1f}"] and not verdict.ok


def test_more_than_the_daily_limit_is_found_and_the_next_need_not_pass() -> None:
    second, third = request("later", T0 + 12, "second"), request("later", T0 + 20.0, "third")
    verdict = judged_resends([LATER, second, third], [(LATER, T0 + 6.05), (second, T0 + 12.05)])
    assert verdict.ok and verdict.resends_had_to_pass == 2
    verdict = judged_resends(
        [LATER, second, third], [(LATER, T0 + 6.05), (second, T0 + 12.05), (third, T0 + 20.05)]
    )
    assert verdict.resend_limit_broken == ["ana: 3 resends in a day"]
