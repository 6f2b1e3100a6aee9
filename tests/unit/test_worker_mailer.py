"""The worker's pure parts: the email it renders, how SMTP codes are classified, payload decoding."""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import jinja2
import pytest

from services.worker import emails
from services.worker.actors import BadPayload, decode
from services.worker.emails import render_email
from services.worker.errors import PermanentError, TransientError
from services.worker.handlers import verify_link
from services.worker.mailer import classify
from shared.messages import SendVerifyEmail
from shared.settings import load_settings

SETTINGS = load_settings({})


def test_email_has_a_deterministic_message_id_and_both_parts() -> None:
    link = verify_link(base_url="http://x.test/", email_id=7, secret_code="c" * 43)
    message = verify_email(to="alice@example.com", full_name="Alice <b>", link=link, message_id="m-1")
    assert link == "http://x.test/v1/verify_email?email_id=7&secret_code=" + "c" * 43
    assert message["Message-ID"] == "<m-1@signup-outbox>"
    assert message["Subject"] == "Confirm your email address for Signup"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and 'the name "Alice <b>"' in text.get_content() and link in text.get_content()
    assert "it works once, for 15 minutes" in text.get_content()
    assert html is not None and "Alice &lt;b&gt;" in html.get_content()
    assert f'href="{link.replace("&", "&amp;")}"' in html.get_content()


def verify_email(**values: Any) -> EmailMessage:
    to, message_id = values.pop("to"), values.pop("message_id")
    return render_email(
        "verify_email",
        settings=SETTINGS,
        to=to,
        message_id=message_id,
        language="en",
        valid_for=timedelta(minutes=15),
        account_kept_for=timedelta(days=1),
        username="u",
        **values,
    )


def test_a_value_the_template_needs_but_was_not_given_fails_loudly() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_email(
            "verify_email", settings=SETTINGS, to="a@x.org", message_id="m", language="en", full_name="A"
        )


@pytest.mark.parametrize("to", ["alice@example.com\r\nBcc: evil@example.com", "a@x.org\nX-Evil: 1"])
def test_a_newline_can_never_become_a_header(to: str) -> None:
    """Refused as permanent, so the message goes to the dead letters at once instead of retrying in vain."""
    with pytest.raises(PermanentError, match="the stored address"):
        verify_email(to=to, full_name="Alice", link="http://x", message_id="m")


@pytest.mark.parametrize(
    ("code", "kind"), [(421, TransientError), (451, TransientError), (550, PermanentError)]
)
def test_smtp_codes_are_classified(code: int, kind: type[Exception]) -> None:
    assert isinstance(classify(code), kind)


def test_decode_accepts_one_payload_and_refuses_anything_else() -> None:
    assert decode(SendVerifyEmail, ({"username": "alice"},), {}) == SendVerifyEmail(username="alice")
    for args, kwargs in [((), {}), (({"username": "a"}, 1), {}), ((), {"username": "a"}), (({"u": 1},), {})]:
        with pytest.raises(BadPayload):
            decode(SendVerifyEmail, args, kwargs)


def test_metrics_serve_on_their_port_or_not_at_all() -> None:
    import urllib.request

    from services.worker.metrics import WorkerMetrics
    from tests.support import free_port

    metrics = WorkerMetrics()
    assert metrics.serve(port=0) is None
    port = metrics.serve(port=free_port())
    assert port is not None
    assert WorkerMetrics().serve(port=port) is None  # taken: logged, and the worker runs on without
    metrics.emails_sent.labels(kind="verify_email").inc()
    metrics.dead_letters.labels(message="send_verify_email").inc()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'signup_worker_emails_sent_total{kind="verify_email"} 1.0' in body
    assert 'signup_worker_dead_letters_total{message="send_verify_email"} 1.0' in body


def test_warm_up_compiles_every_email_template() -> None:
    # The worker calls it at boot, so that its first email does not compile them.
    templates = emails._templates()
    templates.cache.clear()  # type: ignore[union-attr]
    emails.warm_up()
    assert len(templates.cache) == len(templates.list_templates()) > 0  # type: ignore[arg-type]
