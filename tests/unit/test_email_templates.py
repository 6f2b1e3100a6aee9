"""Every email template in every shipped language: what it says, how it is escaped, the headers it goes with.

The HTML part must be safe to render in any mail client: no ``<style>`` or ``<script>`` element and nothing
that loads a resource (tests/e2e/test_email_browser.py checks the same in Chromium, and screenshots it).
"""

from __future__ import annotations

import email
import email.policy
import re
import unicodedata
from datetime import timedelta
from email.headerregistry import HeaderRegistry
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser

import pytest

from services.worker.emails import POLICY
from shared.settings import load_settings
from tests.support import KINDS, LANGUAGES, LINK, NAMES, SETTINGS, parts, render


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text a reader sees."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def elements(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    parser.close()
    return parser


def test_english_german_and_arabic_are_shipped_for_every_kind() -> None:
    assert {"en", "de", "ar"} <= set(LANGUAGES)
    for kind in KINDS:
        for language in ("en", "de", "ar"):
            assert render(kind, language)["Content-Language"] == language


@pytest.mark.parametrize("name", NAMES, ids=list(NAMES))
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_verification_email_quotes_any_name_as_text(language: str, name: str) -> None:
    full_name = NAMES[name]
    text, html = parts(render("verify_email", language, full_name=full_name))
    shown = unicodedata.normalize("NFC", full_name)
    assert shown in text  # the plain text is not markup: the name as it is, composed
    seen = elements(html)
    assert shown in "".join(seen.text)  # in the HTML, as text
    assert "script" not in {tag for tag, _ in seen.tags}  # … and never as markup
    assert f"<bdi>{shown}</bdi>" in html.replace("&lt;", "<").replace("&gt;", ">")
    first = next(line for line in text.splitlines() if line.strip())
    assert shown not in first  # the greeting is ours alone


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_html_has_lang_and_direction_and_nothing_a_mail_client_drops(kind: str, language: str) -> None:
    _, html = parts(render(kind, language))
    seen = elements(html)
    root = dict(seen.tags)["html"]
    assert root == {"lang": language, "dir": "rtl" if language == "ar" else "ltr"}
    names = {tag for tag, _ in seen.tags}
    assert not names & {"style", "script", "link", "img", "iframe", "object", "embed", "form", "base"}
    for tag, attributes in seen.tags:
        assert not {"src", "srcset", "background", "poster"} & set(attributes), tag
        assert not any(name.startswith("on") for name in attributes), tag
        assert "url(" not in (attributes.get("style") or ""), tag
        if tag == "a":
            assert (attributes.get("href") or "").startswith("https://"), attributes
    assert "width=device-width" in html and "max-width:560px" in html  # reads on a phone


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_product_name_is_in_subject_and_both_parts(kind: str, language: str) -> None:
    message = render(kind, language)
    text, html = parts(message)
    assert SETTINGS.product_name in message["Subject"]
    assert SETTINGS.product_name in text and SETTINGS.product_name in "".join(elements(html).text)


@pytest.mark.parametrize(
    ("language", "valid_for", "kept_for"),
    [("en", "15 minutes", "1 day"), ("de", "15 Minuten", "1 Tag"), ("ar", "15 دقيقة", "يوم")],
)
def test_durations_are_in_the_languages_words(language: str, valid_for: str, kept_for: str) -> None:
    text, html = parts(render("verify_email", language))
    for part in (text, html):
        assert valid_for in part and kept_for in part


def test_a_language_without_templates_falls_back_to_english() -> None:
    message = render("verify_email", "fr")
    assert message["Content-Language"] == "en"
    assert message["Subject"] == f"Confirm your email address for {SETTINGS.product_name}"
    assert elements(parts(message)[1]).tags[0] == ("html", {"lang": "en", "dir": "ltr"})


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_raw_message_parses_with_every_header_and_one_link(language: str) -> None:
    raw = render("verify_email", language).as_bytes()
    assert raw.isascii()  # a server without SMTPUTF8 or 8BITMIME takes it as it is
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    sender = parsed["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (SETTINGS.product_name, "no-reply@signup.local")
    assert b"=?utf-8?" in raw.split(b"\n\n", 1)[0]  # the display name RFC 2047-encoded
    assert parsed["To"].addresses[0].addr_spec == "alice@example.com"
    assert parsed["Subject"] == render("verify_email", language)["Subject"]
    assert parsedate_to_datetime(parsed["Date"]).utcoffset() == timedelta(0)
    assert parsed["Message-ID"] == "<m-1@signup-outbox>"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["Content-Language"] == language
    text, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert text is not None and html is not None
    text_links = re.findall(r"https://\S+", text.get_content())
    html_links = {attributes["href"] for tag, attributes in elements(html.get_content()).tags if tag == "a"}
    assert text_links == [LINK] and html_links == {LINK}
    assert LINK in "".join(elements(html.get_content()).text)  # the link also shown as text


def test_the_recipient_is_as_written_where_the_server_takes_smtputf8() -> None:
    written = "zoë@bücher.de"
    plain = render("verify_email", "en", to=written)
    assert str(plain["To"]) == "zoë@xn--bcher-kva.de"  # the domain's ASCII form every server takes
    utf8 = render("verify_email", "en", to=written, settings=load_settings({}, smtp_smtputf8=True))
    raw = utf8.as_bytes(policy=email.policy.SMTPUTF8)  # as aiosmtplib flattens it for such an address
    parsed = email.message_from_string(raw.decode(), policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == written


def test_each_header_class_is_built_once_and_every_part_is_built_under_the_same_policy() -> None:
    """The email package's registry makes a new class for every header it parses; the worker's keeps the
    first, and every part of an email is built with it."""
    registry = POLICY.header_factory
    assert isinstance(registry, HeaderRegistry)
    assert registry["Subject"] is registry["subject"]
    assert registry["Content-Type"] is registry["content-type"]
    message = render("verify_email", "de")
    assert all(part.policy is POLICY for part in message.walk())
    assert type(message["Subject"]) is registry["subject"]
    assert type(render("signup_notice", "en")["From"]) is type(message["From"])


def test_the_mime_headers_every_email_repeats_are_parsed_once_and_written_as_parsed() -> None:
    """The parts' ``Content-Type``, ``Content-Transfer-Encoding`` and ``MIME-Version`` are the same in every
    email: one parsed header object serves them all, and the email reads back as it was built."""
    first, second = render("verify_email", "de"), render("verify_email", "de", to="zoë@bücher.de")
    for one, other in zip(list(first.walk())[1:], list(second.walk())[1:], strict=True):
        assert one["Content-Type"] is other["Content-Type"]
        assert one["Content-Transfer-Encoding"] is other["Content-Transfer-Encoding"]
    parsed = email.message_from_bytes(first.as_bytes(), policy=email.policy.default)
    second.as_bytes()
    assert first.get_boundary() != second.get_boundary()  # drawn when written, into a header of its own
    written = [[(name, str(value)) for name, value in part.items()] for part in parsed.walk()]
    assert written == [[(name, str(value)) for name, value in part.items()] for part in first.walk()]
