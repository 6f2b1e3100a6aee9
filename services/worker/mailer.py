"""The mail seam: hand an email to an SMTP server, and say whether a failure is worth a retry."""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
from opentelemetry.trace import SpanKind

from services.worker.errors import PermanentError, SmtpDeferred, SmtpRejected, TransientError
from shared.settings import Settings, smtp_tls_context
from shared.telemetry import tracer


class Mailer(Protocol):
    """Sends one email; raises ``TransientError`` or ``PermanentError``."""

    async def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    """Sends over SMTP with ``aiosmtplib``: TLS (``SMTP_TLS``, ``SMTP_CA_FILE``), login and timeout from the
    settings.

    A connection is kept open after a send and reused by the next (one per concurrent send, on the worker's
    event loop), which saves a connect, EHLO and login per email. A connection that failed in any way is
    closed, never reused; a kept one the server has closed meanwhile is replaced by a fresh one at once.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._idle: list[aiosmtplib.SMTP] = []
        self._tls_context = smtp_tls_context(settings)  # built once: loading CAs is not free

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        # A CLIENT span by hand (no SMTP instrumentation exists); it names the server, never the recipient.
        attributes: dict[str, str | int] = {
            "server.address": s.smtp_host,
            "server.port": s.smtp_port,
            "network.protocol.name": "smtp",
        }
        with tracer().start_as_current_span("smtp send", kind=SpanKind.CLIENT, attributes=attributes):
            await self._send_classified(message)

    async def _send_classified(self, message: EmailMessage) -> None:
        try:
            await self._send(message)
        except aiosmtplib.SMTPAuthenticationError:
            # Wrong credentials are the deployment's fault, not the message's: retry until someone fixes them.
            raise TransientError("SMTP login failed") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            raise classify(refused.code if refused else 550, refused.message if refused else "") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise classify(exc.code, exc.message) from None
        except aiosmtplib.SMTPNotSupported:
            if _needs_smtputf8(message):
                # aiosmtplib checks the server's EHLO before sending: this server will never take this
                # address, however often we retry (it used to be retried for hours).
                raise PermanentError(
                    "the SMTP server does not support SMTPUTF8, which this address needs"
                ) from None
            raise TransientError("SMTP server lacks an extension the settings need") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            if _certificate_refused(exc):
                raise TransientError("SMTP server's certificate did not verify (SMTP_CA_FILE?)") from None
            # Connection refused, timeout, disconnect, TLS or login trouble: the server, not the message.
            raise TransientError(f"SMTP unavailable: {type(exc).__name__}") from None

    async def warm_up(self) -> None:
        """Open a connection as ``_open`` does, for the first send to reuse; raises what ``_open`` raises."""
        self._idle.append(await self._open())

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
        client = await self._open()
        try:
            await client.send_message(message)
        except BaseException:
            client.close()
            raise
        self._idle.append(client)

    async def _open(self) -> aiosmtplib.SMTP:
        """A connection greeted (EHLO), secured as ``SMTP_TLS`` says, logged in if there are credentials.
        Raises ``TransientError`` when TLS is needed and missing, else aiosmtplib's errors or ``OSError``."""
        s = self._settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=s.smtp_tls == "implicit",
            start_tls=False,  # decided by _secure, so that the login waits for it
            tls_context=self._tls_context,
            timeout=s.smtp_timeout_ms / 1000,
        )
        try:
            await client.connect()
            secure = await self._secure(client)
            if s.smtp_username:
                if not secure and s.smtp_tls != "off":
                    # A server that offers no STARTTLS (or an attacker who strips it) never gets the password.
                    raise TransientError("SMTP login needs TLS, which the server does not offer")
                await client.login(s.smtp_username, s.smtp_password)
        except BaseException:
            client.close()
            raise
        return client

    async def _secure(self, client: aiosmtplib.SMTP) -> bool:
        """Greet the server and upgrade with STARTTLS where ``SMTP_TLS`` and the server allow; whether the
        connection is now TLS. Raises ``TransientError`` for ``require`` and a server without STARTTLS."""
        tls = self._settings.smtp_tls
        await client.ehlo()
        if tls == "implicit":
            return True
        if tls != "off" and client.supports_extension("starttls"):
            await client.starttls()  # verifies the certificate and name; a failure fails the send
            await client.ehlo()  # what the server said before TLS no longer counts (RFC 3207)
            return True
        if tls == "require":
            raise TransientError("SMTP server offers no STARTTLS and SMTP_TLS=require: nothing sent")
        return False


def _certificate_refused(exc: BaseException) -> bool:
    # STARTTLS raises ssl's error itself; an implicit-TLS connect wraps it in SMTPConnectError.
    return any(isinstance(e, ssl.SSLCertVerificationError) for e in (exc, exc.__cause__))


def _needs_smtputf8(message: EmailMessage) -> bool:
    return not str(message["To"]).isascii()


def classify(code: int, reply: str = "") -> SmtpDeferred | SmtpRejected:
    """SMTP reply ``code`` as our error; the server's text ``reply`` stays out of its message (it may echo
    the address) and is kept on the error for the attempt's record, which masks it."""
    if 500 <= code < 600:
        return SmtpRejected(code, reply)
    return SmtpDeferred(code, reply)
