"""Request and response bodies (DESIGN §6), and the validation that reports every bad field at once."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any

import msgspec
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from msgspec import Meta

Username = Annotated[
    str, Meta(min_length=3, max_length=100, pattern=r"^[a-z0-9_]+$", description="3 to 100 of a-z, 0-9, _")
]
# Letters of any script and single spaces between words; no digits, punctuation or control characters
# (which also keeps CR/LF out of the email's To header).
FullName = Annotated[
    str,
    Meta(min_length=3, max_length=100, pattern=r"^[^\W\d_]+( [^\W\d_]+)*$", description="letters and spaces"),
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
# Any characters but control characters (Unicode category Cc), which the parser rejects in every field.
Password = Annotated[
    str, Meta(min_length=8, max_length=100, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$", description="8 to 100 chars")
]


class CreateUserRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/create_user``. Unknown fields are rejected (400), so a typo never passes silently."""

    username: Username
    full_name: FullName
    email: Email
    password: Password


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


def parse_create_user(body: bytes) -> CreateUserRequest:
    """Decode and validate a ``create_user`` body, reporting every bad field (msgspec stops at the first).

    Raises ``InvalidRequest``. The email comes back normalised (domain lower-cased, Unicode NFC).
    """
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise InvalidRequest([FieldError(field="body", message="malformed JSON")]) from None
    except RecursionError:  # msgspec's answer to "[[[[…]]]]"
        raise InvalidRequest([FieldError(field="body", message="JSON nested too deeply")]) from None
    if not isinstance(raw, dict):
        raise InvalidRequest([FieldError(field="body", message="expected a JSON object")])
    errors = [FieldError(field=str(name), message="unknown field") for name in raw if name not in _FIELDS]
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(CreateUserRequest):
        if field.name not in raw:
            errors.append(FieldError(field=field.name, message="required"))
            continue
        try:
            value = msgspec.convert(raw[field.name], field.type)
        except msgspec.ValidationError as exc:
            message = str(exc).split(" - at ")[0]
            if "matching regex" in message:
                message = _PATTERN_HINTS.get(field.name, message)
            errors.append(FieldError(field=field.name, message=message))
            continue
        # Python's `$` also matches before a final newline, so the patterns alone would let "alice\n"
        # through; no field has a use for control characters, and they are how headers get injected.
        if any(unicodedata.category(char) == "Cc" for char in value):
            errors.append(FieldError(field=field.name, message="must not contain control characters"))
            continue
        values[field.name] = value
    if "email" in values:
        try:
            values["email"] = validate_email(values["email"], check_deliverability=False).normalized
        except EmailNotValidError as exc:
            errors.append(FieldError(field="email", message=str(exc)))
    if errors:
        raise InvalidRequest(errors)
    return CreateUserRequest(**values)


_FIELDS = frozenset(CreateUserRequest.__struct_fields__)
# A regex is no answer for a person filling in a form.
_PATTERN_HINTS = {
    "username": "may contain only lowercase letters, digits and _",
    "full_name": "may contain only letters and single spaces between words",
    "password": "must not contain control characters",
}
