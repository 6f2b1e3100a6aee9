"""Emails rendered from templates: ``templates/<kind>/<language>/`` holds ``subject.txt``, ``body.txt`` and
``body.html``; ``templates/_layout.html`` and ``_parts.html`` are the HTML frame all of them share.

Each email is ``multipart/alternative`` (plain text, then HTML) in the user's language, or in English when
its kind has no folder for that language. The HTML templates are autoescaped, so a full name like
``<b>Eve</b>`` is text, not markup; the plain-text ones are not (nothing there is markup). Durations are
written in the language's words by Babel (CLDR's plural rules: "15 Minuten", "15 دقيقة").
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.policy import default as default_policy
from email.utils import format_datetime, parseaddr
from typing import Any

import jinja2
from babel import Locale
from babel.dates import format_timedelta
from email_validator import EmailNotValidError, validate_email

from services.worker.errors import PermanentError
from shared.languages import DEFAULT_LANGUAGE
from shared.settings import Settings


class _HeaderClasses(HeaderRegistry):
    """The ``email`` package's header registry, building each header's class once and parsing each of the
    headers every email repeats once.

    ``HeaderRegistry`` creates a new class (``type(...)``) for every header it parses, some twenty per
    email, each one cyclic garbage. The class depends only on the header's name, so the first one is kept.
    The MIME headers of the parts (``Content-Type: text/plain; charset="utf-8"``, ``MIME-Version`` and the
    like) are the same in every email: each is parsed once and the header object shared, as a message
    stores it (header objects are immutable; a change replaces one). Building an email is on the way from
    the commit to the inbox, and the ``email`` package's header parsing was much of it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}
        self._parsed: dict[tuple[str, str], BaseHeader] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        header_class = self._classes.get(key)
        if header_class is None:
            header_class = self._classes[key] = super().__getitem__(key)
        return header_class

    def __call__(self, name: str, value: Any) -> BaseHeader:
        if name.lower() not in _REPEATED or not isinstance(value, str) or "boundary=" in value:
            return super().__call__(name, value)
        header = self._parsed.get((name, value))
        if header is None:
            header = super().__call__(name, value)
            if len(self._parsed) < 64:  # a few values each; a bound all the same
                self._parsed[name, value] = header
        return header


# The headers whose values repeat from email to email (a multipart's Content-Type differs by its boundary).
_REPEATED = frozenset(
    {"content-type", "content-transfer-encoding", "mime-version", "content-language", "auto-submitted"}
)


POLICY: EmailPolicy[EmailMessage] = default_policy.clone(header_factory=_HeaderClasses())
"""``email.policy.default`` with ``_HeaderClasses``: every email (and its parts) is built under it."""


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("services.worker", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,  # a value the caller forgot fails the message, not the reader
        keep_trailing_newline=True,
    )


def message_id_header(message_id: str) -> str:
    """The SMTP ``Message-ID`` of the email for Dramatiq message ``message_id``: the same on every retry."""
    return f"<{message_id}@signup-outbox>"


def deliverable(address: str) -> str:
    """``address`` as it goes on the wire: the domain in its ASCII (IDNA) form, the local part as stored.

    ``user@bücher.de`` becomes ``user@xn--bcher-kva.de``, which every SMTP server takes; only a local part
    that is not ASCII still needs the server's SMTPUTF8. Raises ``PermanentError`` for a stored value that
    is no address (the API never stores one, and no retry can mend it).
    """
    try:
        checked = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        raise PermanentError("the stored address is not a deliverable email address") from None
    return f"{checked.local_part}@{checked.ascii_domain}"


def recipient(address: str, *, smtputf8: bool) -> str:
    """The ``To`` of an email to ``address``: as the person wrote it at signup (stored NFC) where the SMTP
    server takes SMTPUTF8, else ``deliverable(address)``. Raises ``PermanentError`` as ``deliverable``."""
    ascii_form = deliverable(address)  # checks the address either way
    return address if smtputf8 else ascii_form


@functools.cache
def _sender_header(product_name: str, mail_from: str) -> BaseHeader:
    """The ``From``: ``PRODUCT_NAME`` as the display name (RFC 2047-encoded on the wire when not ASCII,
    quoted when it holds a comma or the like), ``MAIL_FROM``'s address; parsed once per settings."""
    address = Address(display_name=product_name, addr_spec=parseaddr(mail_from)[1])
    header: BaseHeader = POLICY.header_factory("From", address)
    return header


def template_language(kind: str, language: str) -> str:
    """``language`` if ``kind`` has templates in it, else ``DEFAULT_LANGUAGE``."""
    if f"{kind}/{language}/body.html" in _template_names():
        return language
    return DEFAULT_LANGUAGE


@functools.cache
def _template_names() -> frozenset[str]:
    return frozenset(_templates().list_templates())


@functools.cache
def _locale(language: str) -> Locale:
    return Locale.parse(language, sep="-")


def render_email(
    kind: str, *, settings: Settings, to: str, message_id: str, language: str, **values: Any
) -> EmailMessage:
    """The email of ``kind`` to ``to`` in ``language`` (English without templates for it), its templates
    filled with ``values`` (text NFC-normalised) and with ``product_name``, ``site``, ``lang``, ``dir``,
    ``start`` and ``duration`` (a ``timedelta`` in the language's words).

    The recipient is ``recipient(to)``. ``EmailMessage`` refuses CR/LF in header values, so no header can
    be injected; such an address raises ``PermanentError`` (the API never stores one, and no retry can mend
    it). A missing template or value raises ``jinja2.TemplateError``.
    """
    language = template_language(kind, language)
    context = _context(language, settings=settings, values=values)
    templates = _templates()
    message = EmailMessage(policy=POLICY)
    message["From"] = _sender_header(settings.product_name, settings.mail_from)
    try:
        message["To"] = recipient(to, smtputf8=settings.smtp_smtputf8)
    except ValueError:
        raise PermanentError("the stored address cannot be an email header") from None
    message["Subject"] = templates.get_template(f"{kind}/{language}/subject.txt").render(context).strip()
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id_header(message_id)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message.set_content(templates.get_template(f"{kind}/{language}/body.txt").render(context))
    message.add_alternative(
        templates.get_template(f"{kind}/{language}/body.html").render(context), subtype="html"
    )
    # After the parts: setting the content clears Content-* headers.
    message["Content-Language"] = language
    return message


def _context(language: str, *, settings: Settings, values: dict[str, Any]) -> dict[str, Any]:
    """What every template of ``language`` is filled with: ``values`` (text NFC, as the API stores it: an
    older row's NFD name shows the same) and what the frame needs."""
    rtl = _locale(language).character_order == "right-to-left"
    return {
        name: unicodedata.normalize("NFC", value) if isinstance(value, str) else value
        for name, value in values.items()
    } | {
        "product_name": settings.product_name,
        "site": settings.public_base_url,
        "lang": language,
        "dir": "rtl" if rtl else "ltr",
        "start": "right" if rtl else "left",
        "duration": _durations(language),
    }


@functools.cache
def _durations(language: str) -> Callable[[timedelta], str]:
    locale = _locale(language)

    def duration(value: timedelta) -> str:
        # Babel rounds to the largest unit that holds at least 85 % of it: 15 minutes, 1 hour, 1 day.
        return format_timedelta(value, locale=locale, format="long")

    return duration


def warm_up() -> None:
    """Compile every template and build one throwaway email: otherwise a fresh process's first email pays for
    jinja's compile, Babel's locale data and the ``email`` package's first use."""
    templates = _templates()
    for name in templates.list_templates():
        templates.get_template(name)
    for name in _template_names():
        if name.count("/") == 2:
            _durations(name.split("/")[1])(timedelta(minutes=15))
    message = EmailMessage()
    message["To"] = deliverable("warm-up@example.com")
    message["Date"] = format_datetime(datetime.now(UTC))
    message.set_content("-")
    message.add_alternative("<p>-</p>", subtype="html")
    message.as_bytes()
