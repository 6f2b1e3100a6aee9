"""Emails rendered from templates: ``templates/<kind>/`` holds ``subject.txt``, ``body.txt``, ``body.html``.

Each email is ``multipart/alternative`` (plain text, then HTML). The HTML template is autoescaped, so a
full name like ``<b>Eve</b>`` is text, not markup; the plain-text one is not (nothing there is markup).
"""

from __future__ import annotations

import functools
from email.message import EmailMessage
from typing import Any

import jinja2
from email_validator import EmailNotValidError, validate_email

from services.worker.errors import PermanentError
from shared.settings import Settings


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


def render_email(kind: str, *, settings: Settings, to: str, message_id: str, **values: Any) -> EmailMessage:
    """The email of ``kind`` to ``to``, its templates filled with ``values``.

    The recipient is ``deliverable(to)``. ``EmailMessage`` refuses CR/LF in header values, so no header can
    be injected; such an address raises ``PermanentError`` (the API never stores one, and no retry can mend
    it). A missing template or value raises ``jinja2.TemplateError``.
    """
    templates = _templates()
    message = EmailMessage()
    message["From"] = settings.mail_from
    try:
        message["To"] = deliverable(to)
    except ValueError:
        raise PermanentError("the stored address cannot be an email header") from None
    message["Subject"] = templates.get_template(f"{kind}/subject.txt").render(**values).strip()
    message["Message-ID"] = message_id_header(message_id)
    message.set_content(templates.get_template(f"{kind}/body.txt").render(**values))
    message.add_alternative(templates.get_template(f"{kind}/body.html").render(**values), subtype="html")
    return message


def warm_up() -> None:
    """Compile every template and build one throwaway email: otherwise a fresh process's first email pays for
    jinja's compile and the ``email`` package's first use."""
    templates = _templates()
    for name in templates.list_templates():
        templates.get_template(name)
    message = EmailMessage()
    message["To"] = deliverable("warm-up@example.com")
    message.set_content("-")
    message.add_alternative("<p>-</p>", subtype="html")
    message.as_bytes()
