"""The console's login limit: failures per client address and per name typed, in a sliding minute."""

from __future__ import annotations

from services.admin.login_limits import LoginLimiter


def test_the_sixth_try_within_a_minute_waits_for_the_oldest_failure_to_age() -> None:
    limiter = LoginLimiter()
    keys = limiter.keys("10.0.0.1", "alice")
    for second in range(5):
        assert limiter.retry_after(keys, now=100.0 + second) == 0
        limiter.failed(keys, now=100.0 + second)
    assert limiter.retry_after(keys, now=110.0) == 50
    assert limiter.retry_after(keys, now=160.5) == 0  # the first failure is over a minute old


def test_one_name_tried_from_many_addresses_is_limited_too() -> None:
    limiter = LoginLimiter()
    for host in range(5):
        limiter.failed(limiter.keys(f"10.0.0.{host}", "alice"), now=0.0)
    assert limiter.retry_after(limiter.keys("10.0.1.1", "alice"), now=1.0) == 59
    assert limiter.retry_after(limiter.keys("10.0.1.1", "bob"), now=1.0) == 0


def test_names_are_kept_as_digests_and_keys_are_bounded() -> None:
    limiter = LoginLimiter(max_keys=4)
    for n in range(10):
        limiter.failed(limiter.keys(f"10.0.0.{n}", f"secret-{n}"), now=float(n))
    assert len(limiter) == 4
    assert not any("secret" in key for key in limiter.keys("10.0.0.1", "secret-1"))
