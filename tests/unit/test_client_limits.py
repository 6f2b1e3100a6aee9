"""Per-client limits: whose address counts, and the token bucket (DESIGN §8)."""

from __future__ import annotations

import pytest

from services.api.client_limits import MAX_CLIENTS, ClientLimited, ClientLimiter, client_address
from shared.settings import SettingsError, load_settings, trusted_networks

PROXY = trusted_networks("10.0.0.0/8, 192.0.2.7")


def test_without_trusted_proxies_a_forged_x_forwarded_for_is_ignored() -> None:
    assert client_address("203.0.113.9", ["198.51.100.1"], ()) == "203.0.113.9"
    assert client_address("203.0.113.9", ["198.51.100.1"], PROXY) == "203.0.113.9"  # the peer is no proxy


def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() -> None:
    # The client wrote "1.1.1.1" itself; our proxies appended what they saw.
    assert client_address("10.0.0.2", ["1.1.1.1, 198.51.100.4", "192.0.2.7"], PROXY) == "198.51.100.4"
    assert client_address("10.0.0.2", ["garbage, 10.1.1.1"], PROXY) == "10.1.1.1"
    assert client_address("10.0.0.2", [], PROXY) == "10.0.0.2"


def test_a_bad_trusted_proxies_setting_stops_the_process() -> None:
    with pytest.raises(SettingsError, match="API_TRUSTED_PROXIES"):
        load_settings({"API_TRUSTED_PROXIES": "10.0.0.0/8, not-an-address"})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_429_with_the_wait_until_the_next_one() -> None:
    clock = Clock()
    limiter = ClientLimiter("create_user", per_hour=3, clock=clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(ClientLimited) as refused:
        limiter.take("a")
    assert refused.value.retry_after_s == 1200  # one request per 20 minutes
    limiter.take("b")  # another client is not affected
    clock.now = 1200.0
    limiter.take("a")
    with pytest.raises(ClientLimited):
        limiter.take("a")


def test_buckets_are_bounded() -> None:
    limiter = ClientLimiter("create_user", per_hour=1, clock=Clock())
    for n in range(MAX_CLIENTS + 5):
        limiter.take(str(n))
    limiter.take("0")  # the oldest bucket was dropped: a full allowance again


def test_zero_is_no_limit() -> None:
    limiter = ClientLimiter("create_user", per_hour=0)
    for _ in range(100):
        limiter.take("a")
