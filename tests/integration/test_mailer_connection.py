"""``SmtpMailer`` keeps its SMTP connection open between sends, and replaces one the server has closed."""

from __future__ import annotations

from email.message import EmailMessage

from services.worker.mailer import SmtpMailer
from shared.settings import Settings
from tests.support import SmtpSink, render


def email(settings: Settings, n: int) -> EmailMessage:
    return render("verify_email", "en", settings=settings, to=f"user{n}@example.com", message_id=f"m{n}")


async def test_two_sends_share_one_connection(settings: Settings, sink: SmtpSink) -> None:
    mailer = SmtpMailer(settings)
    await mailer.send(email(settings, 1))
    [kept] = mailer._idle
    await mailer.send(email(settings, 2))
    assert mailer._idle == [kept] and kept.is_connected
    assert len(sink.received) == 2
    kept.close()


async def test_a_connection_closed_while_idle_is_replaced(settings: Settings, sink: SmtpSink) -> None:
    mailer = SmtpMailer(settings)
    await mailer.send(email(settings, 1))
    [kept] = mailer._idle
    kept.close()  # as a server's idle timeout would
    await mailer.send(email(settings, 2))
    assert len(sink.received) == 2 and mailer._idle and mailer._idle[0] is not kept
    mailer._idle[0].close()
