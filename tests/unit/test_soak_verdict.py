"""The soak's verdict on resends, on made-up records: what it must call lost, duplicated or a broken limit.

tests/e2e/test_soak.py runs the real thing; these show that its verdict fails when a resend's email is
dropped or doubled, or when the limits let through what they had to refuse, or refuse what they had to
let through, which a run that keeps the promise never shows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from lab.harness.load import Signup
from lab.harness.smtp import Delivery
from lab.soak.resends import Request
from lab.soak.verdict import Verdict, judge_mail, judge_resends
from services.worker.emails import message_id_header

T0 = 1_800_000_000.0
USERS = {"ana": ("ana@lab.example", datetime.fromtimestamp(T0, UTC))}
SIGNUP_EVENT, RESEND_EVENT = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
EVENTS = {SIGNUP_EVENT: "ana", RESEND_EVENT: "ana"}
RESENDS = {RESEND_EVENT: ("ana", datetime.fromtimestamp(T0 + 10, UTC))}


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


def judged_resends(requests: list[Request], counted_at: list[float]) -> Verdict:
    verdict = Verdict()
    resends = {f"e{n}": ("ana", datetime.fromtimestamp(at, UTC)) for n, at in enumerate(counted_at)}
    signup = Signup("ana", "ana@lab.example", 200, T0 - 0.5, T0 + 0.2)
    judge_resends(
        verdict,
        requests=requests,
        signups=[signup],
        users=USERS,
        resends=resends,
        verified=set(),
        min_interval_s=5,
        max_per_day=2,
    )
    return verdict


REPEAT = Request("ana", "repeat", 202, T0 + 0.3, T0 + 0.4)
LATER = Request("ana", "later", 202, T0 + 6.0, T0 + 6.1)


def test_limits_kept_both_ways() -> None:
    verdict = judged_resends([REPEAT, LATER], [T0 + 6.05])
    assert verdict.ok and verdict.resends_had_to_refuse == 1 and verdict.resends_had_to_pass == 1


def test_a_resend_counted_after_its_answer_counts_for_its_request() -> None:
    """The API answers a resend before it does the work: the row comes after the answer, before the user's
    next request."""
    verdict = judged_resends([REPEAT, LATER], [T0 + 6.5])
    assert verdict.ok and verdict.resends_had_to_pass == 1


def test_a_refused_request_that_had_to_pass_is_found() -> None:
    verdict = judged_resends([REPEAT, LATER], [])
    assert verdict.resends_refused_wrongly and not verdict.ok


def test_a_resend_too_soon_is_found() -> None:
    verdict = judged_resends([REPEAT, LATER], [T0 + 0.35, T0 + 6.05])
    assert verdict.resends_passed_wrongly and verdict.resend_limit_broken


def test_more_than_the_daily_limit_is_found_and_the_next_need_not_pass() -> None:
    third = Request("ana", "later", 202, T0 + 20.0, T0 + 20.1)
    verdict = judged_resends(
        [LATER, Request("ana", "later", 202, T0 + 12, T0 + 12.1), third], [T0 + 6.05, T0 + 12.05]
    )
    assert verdict.ok and verdict.resends_had_to_pass == 2
    verdict = judged_resends([third], [T0 + 6.05, T0 + 12.05, T0 + 20.05])
    assert verdict.resend_limit_broken == ["ana: 3 resends in a day"]
