"""Emails rendered from templates: ``templates/<kind>/`` holds ``subject.txt``, ``body.txt``, ``body.html``.

Each email is ``multipart/alternative`` (plain text, then HTML). The HTML template is autoescaped, so a
full name like ``<b>Eve</b>`` is text, not markup; the plain-text one is not (nothing there is markup).
"""

from __future__ import annotations

import functools
from email.message import EmailMessage
from typing import Any

import jinja2

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


def render_email(kind: str, *, settings: Settings, to: str, message_id: str, **values: Any) -> EmailMessage:
    """The email of ``kind`` to ``to``, its templates filled with ``values``.

    ``EmailMessage`` refuses CR/LF in header values, so no header can be injected; such an address raises
    ``PermanentError`` (the API never stores one, and no retry can mend it). A missing template or value
    raises ``jinja2.TemplateError``.
    """
    templates = _templates()
    message = EmailMessage()
    message["From"] = settings.mail_from
    try:
        message["To"] = to
    except ValueError:
        raise PermanentError("the stored address cannot be an email header") from None
    message["Subject"] = templates.get_template(f"{kind}/subject.txt").render(**values).strip()
    message["Message-ID"] = message_id_header(message_id)
    message.set_content(templates.get_template(f"{kind}/body.txt").render(**values))
    message.add_alternative(templates.get_template(f"{kind}/body.html").render(**values), subtype="html")
    return message
