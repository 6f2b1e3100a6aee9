"""Request and response bodies (DESIGN §6), and the validation that reports every bad field at once."""

from __future__ import annotations

import functools
import itertools
import sys
import unicodedata
import urllib.parse
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from msgspec import Meta

from shared.languages import LANGUAGE_TAG

T = TypeVar("T", bound=msgspec.Struct)

Username = Annotated[
    str, Meta(min_length=3, max_length=100, pattern=r"^[a-z0-9_]+$", description="3 to 100 of a-z, 0-9, _")
]


def _char_class(category_prefix: str) -> str:
    """A regex class of every code point whose Unicode category starts with ``category_prefix``."""
    points = [
        c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith(category_prefix)
    ]
    ranges = []
    for _, run in itertools.groupby(enumerate(points), lambda pair: pair[1] - pair[0]):
        block = [point for _, point in run]
        # The characters themselves: none of them is special in a class, and "\u" cannot name one past FFFF.
        ranges.append(chr(block[0]) if len(block) == 1 else f"{chr(block[0])}-{chr(block[-1])}")
    return "[" + "".join(ranges) + "]"


# A word is a letter of any script followed by letters and combining marks (Python's \w has no marks, and
# some scripts' vowels are marks that NFC cannot compose away: "अनिल"). Words are joined by one space,
# hyphen, apostrophe (' or U+2019) or period, or by a period and a space ("J. R. R. Tolkien"); a final period
# ends an abbreviation ("Jr."). Digits, other punctuation and control characters (CR/LF would reach the
# email's To header) are refused. The check runs on the text as sent (as a client checking the OpenAPI
# would), then the text is stored NFC: "José" typed as e + U+0301 passes and is stored composed.
_WORD = rf"[^\W\d_](?:[^\W\d_]|{_char_class('M')})*"
FullName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=100,
        pattern=rf"^{_WORD}(?:(?:[ '\u2019.-]|\. ){_WORD})*\.?$",
        description="letters of any script (with combining marks); words joined by a space, - ' \u2019 or .",
    ),
]


def _any_case(word: str) -> str:
    return "".join(f"[{char}{char.upper()}]" for char in word)


# email_validator refuses special-use domains (RFC 6761: .test, .local, …): no mail can reach them. The
# pattern only documents that in the OpenAPI (JSON Schema regexes have no flags, hence the [tT] classes);
# validate_email in parse_create_user is what enforces it.
_NO_SPECIAL_USE_DOMAIN = (
    rf"^(?!.*[@.](?:{'|'.join(_any_case(name) for name in SPECIAL_USE_DOMAIN_NAMES)})\.?$)"
)
Email = Annotated[
    str,
    Meta(
        max_length=200,
        description="an email address, at most 200 chars; special-use domains (.test, .local, …) are refused",
        extra_json_schema={"format": "email", "pattern": _NO_SPECIAL_USE_DOMAIN},
    ),
]
Language = Annotated[
    str,
    Meta(
        max_length=35,
        pattern=LANGUAGE_TAG,
        description=(
            "optional: the language of the account's emails (a BCP 47 tag such as de or pt-BR); without it, "
            "or without templates for it, the request's Accept-Language decides, then English"
        ),
    ),
]
# Any characters but control characters (Unicode category Cc), which the parser rejects in every field.
Password = Annotated[
    str, Meta(min_length=8, max_length=100, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$", description="8 to 100 chars")
]


class CreateUserRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /v1/create_user``. Unknown fields are rejected (400), so a typo never passes silently."""

    username: Username
    full_name: FullName
    email: Email
    password: Password
    language: Language | None = None


class ResendVerifyEmailRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/resend_verify_email``: the address to send a new verification email to."""

    email: Email


class VerifyEmailForm(msgspec.Struct, forbid_unknown_fields=True):
    """The confirmation page's form: the link's id and code, posted back from the same origin."""

    email_id: Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
    secret_code: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class User(msgspec.Struct):
    username: str
    full_name: str
    email: str
    password_changed_at: datetime
    created_at: datetime


class CreateUserResponse(msgspec.Struct):
    user: User


class VerifyEmailResponse(msgspec.Struct):
    is_verified: bool


class Accepted(msgspec.Struct):
    """The one answer of ``resend_verify_email``, whatever the address belongs to."""

    status: str = "accepted"


class FieldError(msgspec.Struct):
    field: str
    message: str


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error response: a message, one entry per bad field where fields were at fault."""

    error: str
    fields: list[FieldError] = msgspec.field(default_factory=list)
    trace_id: str | None = None


class InvalidRequest(Exception):
    """The body is not a valid request; ``errors`` has one entry per bad field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("invalid request")
        self.errors = errors


def parse_create_user(body: bytes, *, allow_smtputf8: bool) -> CreateUserRequest:
    """Decode and validate a ``create_user`` body; see ``parse_body``."""
    return parse_body(CreateUserRequest, _decode_object(body), allow_smtputf8=allow_smtputf8)


def parse_resend(body: bytes, *, form: bool, allow_smtputf8: bool) -> ResendVerifyEmailRequest:
    """Decode and validate a ``resend_verify_email`` body, JSON or (``form``) URL-encoded; see parse_body."""
    raw = _decode_form(body) if form else _decode_object(body)
    return parse_body(ResendVerifyEmailRequest, raw, allow_smtputf8=allow_smtputf8)


def parse_verify_form(body: bytes) -> VerifyEmailForm:
    """Decode and validate the confirmation page's URL-encoded form. Raises ``InvalidRequest``."""
    try:
        return msgspec.convert(_decode_form(body), VerifyEmailForm, strict=False)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at ")
        field = where.removeprefix("$.") or "body"
        raise InvalidRequest([FieldError(field=field, message=message)]) from None


def parse_body(struct: type[T], raw: dict[str, Any], *, allow_smtputf8: bool) -> T:
    """Validate the decoded ``raw`` as ``struct``, reporting every bad field (msgspec stops at the first).

    Raises ``InvalidRequest``. Text comes back NFC-normalised, and the email normalised as
    ``email_validator`` does it (domain lower-cased, Unicode NFC). An address whose local part is not ASCII
    is refused unless ``allow_smtputf8`` (the SMTP server takes SMTPUTF8, DESIGN §6).
    """
    errors = [
        FieldError(field=str(name), message="unknown field")
        for name in raw
        if name not in struct.__struct_fields__
    ]
    values: dict[str, Any] = {}
    for field in _fields(struct):
        if field.name not in raw:
            if field.required:
                errors.append(FieldError(field=field.name, message="required"))
            continue
        try:
            # The published schema's rules, on the text as sent: JSON Schema counts the code points a client
            # sends, so a name valid there ("A" + U+0300 + "l") is valid here, and one over a limit there
            # (a long name typed with combining accents) is refused here too.
            value = msgspec.convert(raw[field.name], field.type)
        except msgspec.ValidationError as exc:
            message = str(exc).split(" - at ")[0]
            if "matching regex" in message:
                message = _PATTERN_HINTS.get(field.name, message)
            errors.append(FieldError(field=field.name, message=message))
            continue
        # Python's `$` also matches before a final newline, so the patterns alone would let "alice\n"
        # through; no field has a use for control characters, and they are how headers get injected.
        if isinstance(value, str) and any(unicodedata.category(char) == "Cc" for char in value):
            errors.append(FieldError(field=field.name, message="must not contain control characters"))
            continue
        # One spelling per text: "José" typed as e + U+0301 (NFD, as some keyboards send it) is the same
        # name, and compares equal, stored NFC (NFC only composes letters with their marks: the pattern
        # still holds).
        values[field.name] = unicodedata.normalize("NFC", value) if isinstance(value, str) else value
    if "email" in values:
        try:
            values["email"] = _normalized_email(values["email"], allow_smtputf8=allow_smtputf8)
        except EmailNotValidError as exc:
            errors.append(FieldError(field="email", message=str(exc)))
    if errors:
        raise InvalidRequest(errors)
    return struct(**values)


@functools.cache
def _fields(struct: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    # msgspec.structs.fields() evaluates the string annotations again at every call: a millisecond a request.
    return msgspec.structs.fields(struct)


def _normalized_email(email: str, *, allow_smtputf8: bool) -> str:
    # An address the worker could never deliver is refused here, saying why, rather than dead-lettered.
    if not allow_smtputf8 and not email.rpartition("@")[0].isascii():
        raise EmailNotValidError(
            "letters outside ASCII before the @ need SMTPUTF8, which our mail server does not offer"
        )
    return validate_email(email, check_deliverability=False, allow_smtputf8=allow_smtputf8).normalized


def _decode_form(body: bytes) -> dict[str, Any]:
    try:
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest([FieldError(field="body", message="malformed form data")]) from None
    return dict(pairs)


def _decode_object(body: bytes) -> dict[str, Any]:
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise InvalidRequest([FieldError(field="body", message="malformed JSON")]) from None
    except RecursionError:  # msgspec's answer to "[[[[…]]]]"
        raise InvalidRequest([FieldError(field="body", message="JSON nested too deeply")]) from None
    if not isinstance(raw, dict):
        raise InvalidRequest([FieldError(field="body", message="expected a JSON object")])
    return raw


# A regex is no answer for a person filling in a form.
_PATTERN_HINTS = {
    "username": "may contain only lowercase letters, digits and _",
    "full_name": "may contain only letters, and single spaces, hyphens, apostrophes or periods between words",
    "password": "must not contain control characters",
}
