"""The language a user's emails are written in: chosen once at signup, from what the client prefers.

The languages there are templates for are the folders under ``services/worker/templates/<kind>/``: the API
reads that list (not the worker's code) to pick, at signup, the best one the client accepts, and stores it
with the user. Adding a language is adding a folder (docs/DESIGN.md, "Emails").
"""

from __future__ import annotations

import functools
import importlib.resources
import re

DEFAULT_LANGUAGE = "en"
"""What an email is written in when nothing the client accepts has templates."""

MAX_HEADER_CHARS = 512
"""Only this much of an ``Accept-Language`` header is read: a browser sends well under 100 characters."""
MAX_RANGES = 16
"""Only this many language ranges of a header are considered, in the order sent."""

LANGUAGE_TAG = r"^[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8}){0,5}$"
"""A BCP 47 language tag as far as choosing templates needs (``de``, ``pt-BR``, ``zh-Hant-TW``)."""

_TAG = re.compile(LANGUAGE_TAG)
_QUALITY = re.compile(r"^[qQ]=(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")


def parse_accept_language(header: str | None) -> list[str]:
    """The language ranges of an ``Accept-Language`` header (RFC 9110 §12.5.4), most wanted first.

    Ranges with ``q=0`` (not acceptable), the wildcard ``*`` (says nothing about which) and malformed
    entries are left out; equal weights keep the order sent. Only the first ``MAX_HEADER_CHARS`` characters
    and ``MAX_RANGES`` ranges are read, so a huge header costs no more than a normal one. Never raises.
    """
    if not header:
        return []
    weighted: list[tuple[float, str]] = []
    for entry in header[:MAX_HEADER_CHARS].split(",")[:MAX_RANGES]:
        tag, *params = (part.strip() for part in entry.split(";"))
        if not _TAG.fullmatch(tag):
            continue
        quality = 1.0
        for param in params:
            if (match := _QUALITY.match(param)) is None:
                quality = -1.0  # a malformed weight: the entry is not understood, so not used
                break
            quality = float(match.group(1))
        if quality > 0:
            weighted.append((quality, tag))
    weighted.sort(key=lambda pair: -pair[0])  # stable: equal weights stay in the order sent
    return [tag for _, tag in weighted]


def negotiate(preferences: list[str], available: frozenset[str]) -> str:
    """The first of ``preferences`` that ``available`` has, by RFC 4647 lookup: ``de-AT-1996`` tries
    ``de-AT-1996``, ``de-AT``, then ``de``, ignoring case; ``DEFAULT_LANGUAGE`` when none matches. The
    answer is spelled as in ``available``."""
    by_key = {language.lower(): language for language in available}
    for preference in preferences:
        subtags = preference.lower().split("-")
        while subtags:
            if (found := by_key.get("-".join(subtags))) is not None:
                return found
            subtags.pop()
    return DEFAULT_LANGUAGE


def choose_language(*, explicit: str | None, accept_language: str | None) -> str:
    """The language to store for a signup: ``explicit`` (the body's ``language``) if there are templates
    for it, else the best of ``accept_language``, else ``DEFAULT_LANGUAGE``."""
    preferences = [explicit] if explicit else []
    return negotiate(preferences + parse_accept_language(accept_language), email_languages())


@functools.cache
def email_languages() -> frozenset[str]:
    """Every language some email kind has a template folder for (``DEFAULT_LANGUAGE`` among them)."""
    root = importlib.resources.files("services.worker") / "templates"
    return frozenset(
        language.name
        for kind in root.iterdir()
        if kind.is_dir()
        for language in kind.iterdir()
        if language.is_dir() and _TAG.fullmatch(language.name)
    )
