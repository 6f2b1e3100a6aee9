"""Choosing the language of a user's emails: the ``Accept-Language`` parser and the lookup (RFC 4647)."""

from __future__ import annotations

import pytest

from shared.languages import (
    MAX_HEADER_CHARS,
    MAX_RANGES,
    choose_language,
    email_languages,
    negotiate,
    parse_accept_language,
)

SHIPPED = frozenset({"en", "de", "ar"})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("de-CH,de;q=0.9,en;q=0.8", ["de-CH", "de", "en"]),
        ("en;q=0.5, ar", ["ar", "en"]),  # weights, not order
        ("fr, de, en", ["fr", "de", "en"]),  # equal weights keep the order sent
        ("de;q=0, en", ["en"]),  # q=0: not acceptable
        ("*, de;q=0.1", ["de"]),  # the wildcard says nothing about which
        ("en;q=1.000, de;q=0.999", ["en", "de"]),
        ("de;q=2, en;q=abc, ar;q=0.5", ["ar"]),  # malformed weights are not understood: not used
        ("<script>, 12, en--us, de", ["de"]),  # malformed ranges are skipped
        ("  DE-at ;  q=0.7 ", ["DE-at"]),
        ("", []),
        (None, []),
    ],
)
def test_accept_language_is_parsed_by_weight(header: str | None, expected: list[str]) -> None:
    assert parse_accept_language(header) == expected


def test_a_huge_header_is_read_only_as_far_as_its_bound() -> None:
    many = ",".join(["xx"] * 10_000 + ["de"])
    assert parse_accept_language(many) == ["xx"] * MAX_RANGES
    late = "x" * MAX_HEADER_CHARS + ",de"
    assert parse_accept_language(late) == []


@pytest.mark.parametrize(
    ("preferences", "expected"),
    [
        (["de-AT-1996"], "de"),  # truncated subtag by subtag
        (["AR-eg"], "ar"),
        (["fr", "de"], "de"),  # the first one there are templates for
        (["fr"], "en"),
        ([], "en"),
    ],
)
def test_the_first_preference_with_templates_wins(preferences: list[str], expected: str) -> None:
    assert negotiate(preferences, SHIPPED) == expected


def test_the_explicit_field_comes_before_the_header_but_only_if_there_are_templates() -> None:
    assert choose_language(explicit="ar", accept_language="de") == "ar"
    assert choose_language(explicit="fr", accept_language="de") == "de"
    assert choose_language(explicit=None, accept_language=None) == "en"


def test_the_shipped_languages_are_the_template_folders() -> None:
    assert {"en", "de", "ar"} <= email_languages()
