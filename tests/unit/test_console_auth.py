"""The console's credentials, sessions and CSRF tokens, without servers."""

from __future__ import annotations

import pytest

from services.admin.auth import SESSION_S, Guard, same_origin
from shared.settings import SettingsError, console_operators, load_settings

OPERATORS = {"alice": "a" * 16, "bob": "b" * 20}


def test_operators_come_from_the_environment_with_no_default_and_never_shown() -> None:
    assert console_operators(load_settings({})) == {}
    settings = load_settings({"CONSOLE_OPERATORS": "alice:" + "s" * 16 + ", bob:" + "t" * 17})
    assert console_operators(settings) == {"alice": "s" * 16, "bob": "t" * 17}
    assert "s" * 16 not in repr(settings) and "t" * 17 not in str(settings)


@pytest.mark.parametrize(
    "value", ["alice:tiny1", "alice", "Alice:" + "x" * 16, "alice:" + "x" * 16 + ",alice:" + "y" * 16]
)
def test_a_short_password_or_a_bad_or_repeated_name_stops_the_process(value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"CONSOLE_OPERATORS": value})
    assert "x" * 16 not in str(raised.value) and "tiny1" not in str(raised.value)


def test_a_password_opens_only_its_own_operators_session() -> None:
    guard = Guard(OPERATORS)
    assert guard.check("alice", "a" * 16) == "alice"
    assert guard.check("alice", "b" * 20) is None
    assert guard.check("bob", "b" * 20) == "bob"
    assert guard.check("carol", "a" * 16) is None


def test_a_session_cookie_is_signed_and_expires() -> None:
    guard = Guard(OPERATORS)
    cookie = guard.session_cookie("alice", now=1000.0)
    session = guard.session(cookie, now=1001.0)
    assert session is not None and session.operator == "alice"
    assert guard.session(cookie, now=1000.0 + SESSION_S + 1) is None
    _, expiry, nonce, mac = cookie.split(".")
    assert guard.session(f"bob.{expiry}.{nonce}.{mac}", now=1001.0) is None
    assert guard.session(f"alice.{int(expiry) + 9999}.{nonce}.{mac}", now=1001.0) is None
    assert Guard({"alice": "c" * 16}).session(cookie, now=1001.0) is None  # a changed password ends it


def test_a_csrf_token_belongs_to_one_session() -> None:
    guard = Guard(OPERATORS)
    first = guard.session(guard.session_cookie("alice"))
    second = guard.session(guard.session_cookie("alice"))
    assert first is not None and second is not None
    assert guard.csrf_ok(first.nonce, guard.csrf(first.nonce))
    assert not guard.csrf_ok(second.nonce, guard.csrf(first.nonce))
    assert not guard.csrf_ok(first.nonce, None) and not guard.csrf_ok(None, guard.csrf(first.nonce))


def test_only_the_consoles_own_pages_may_post() -> None:
    assert same_origin({"sec-fetch-site": "same-origin"}, "127.0.0.1:8081")
    assert not same_origin({"sec-fetch-site": "same-site"}, "127.0.0.1:8081")
    assert not same_origin({"sec-fetch-site": "cross-site"}, "127.0.0.1:8081")
    assert same_origin({"origin": "http://127.0.0.1:8081"}, "127.0.0.1:8081")
    assert not same_origin({"origin": "http://localhost:9999"}, "127.0.0.1:8081")
    assert not same_origin({"origin": "null"}, "127.0.0.1:8081")
    assert same_origin({}, "127.0.0.1:8081")  # curl: no browser, no ambient cookie to abuse
