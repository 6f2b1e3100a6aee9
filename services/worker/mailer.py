"""The mail seam: build the verification email and hand it to an SMTP server."""

from __future__ import annotations

import html
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import urlencode

import aiosmtplib

from services.worker.errors import PermanentError, TransientError
from shared.settings import Settings


class Mailer(Protocol):
    """Sends one email; raises ``TransientError`` or ``PermanentError``."""

    async def send(self, message: EmailMessage) -> None: ...


def message_id_header(message_id: str) -> str:
    """The SMTP ``Message-ID`` of the email for Dramatiq message ``message_id``: the same on every retry."""
    return f"<{message_id}@signup-outbox>"


def verify_link(*, base_url: str, email_id: int, secret_code: str) -> str:
    query = urlencode({"email_id": email_id, "secret_code": secret_code})
    return f"{base_url.rstrip('/')}/v1/verify_email?{query}"


def build_verify_email(
    *, settings: Settings, to: str, full_name: str, link: str, message_id: str
) -> EmailMessage:
    """A text + HTML email. ``EmailMessage`` refuses CR/LF in header values, so no header can be injected.

    Raises ``PermanentError`` for such an address: the API never stores one, and no retry can mend it.
    """
    message = EmailMessage()
    message["From"] = settings.mail_from
    try:
        message["To"] = to
    except ValueError:
        raise PermanentError("the stored address cannot be an email header") from None
    message["Subject"] = "Verify your email address"
    message["Message-ID"] = message_id_header(message_id)
    minutes = settings.verify_email_ttl_minutes
    message.set_content(
        f"Hello {full_name},\n\nConfirm your email address by opening this link "
        f"(valid for {minutes} minutes):\n\n{link}\n"
    )
    message.add_alternative(
        f"<p>Hello {html.escape(full_name)},</p><p>Confirm your email address "
        f'(the link is valid for {minutes} minutes):</p><p><a href="{html.escape(link)}">'
        "Verify my email</a></p>",
        subtype="html",
    )
    return message


class SmtpMailer:
    """Sends over SMTP with ``aiosmtplib``: STARTTLS, login and timeout from the settings.

    A connection is kept open after a send and reused by the next (one per concurrent send, on the worker's
    event loop), which saves a connect, EHLO and login per email. A connection that failed in any way is
    closed, never reused; a kept one the server has closed meanwhile is replaced by a fresh one at once.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._idle: list[aiosmtplib.SMTP] = []

    async def send(self, message: EmailMessage) -> None:
        try:
            await self._send(message)
        except aiosmtplib.SMTPAuthenticationError:
            # Wrong credentials are the deployment's fault, not the message's: retry until someone fixes them.
            raise TransientError("SMTP login failed") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise classify(exc.recipients[0].code if exc.recipients else 550) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise classify(exc.code) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Connection refused, timeout, disconnect, TLS or login trouble: the server, not the message.
            raise TransientError(f"SMTP unavailable: {type(exc).__name__}") from None

    async def _send(self, message: EmailMessage) -> None:
        while self._idle:
            client = self._idle.pop()
            if not client.is_connected:
                continue
            try:
                await client.send_message(message)
            except aiosmtplib.SMTPServerDisconnected:
                continue  # closed while idle (a server timeout); a copy sent again has the same Message-ID
            except BaseException:
                client.close()
                raise
            self._idle.append(client)
            return
        client = self._client()
        try:
            await client.connect()
            await client.send_message(message)
        except BaseException:
            client.close()
            raise
        self._idle.append(client)

    def _client(self) -> aiosmtplib.SMTP:
        s = self._settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=s.smtp_password or None,
            start_tls=s.smtp_starttls,
            timeout=s.smtp_timeout_ms / 1000,
        )


def classify(code: int) -> Exception:
    """SMTP reply ``code`` as our error; the server's text is left out (it may echo the address)."""
    if 500 <= code < 600:
        return PermanentError(f"SMTP rejected the message with {code}")
    return TransientError(f"SMTP deferred the message with {code}")
