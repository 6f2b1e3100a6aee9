"""Per-client limits on ``create_user`` and resend: a token bucket per client IP address (DESIGN §8).

The client is the connection's peer, or, when that peer is one of ``API_TRUSTED_PROXIES``, the rightmost
address in ``X-Forwarded-For`` that is not a trusted proxy (each proxy appends the address it got the
connection from, so everything left of that is the client's to write). The buckets live in the process:
N API processes allow N times the rate, and a restart forgets them. At most ``MAX_CLIENTS`` buckets are
kept, the least recently seen dropped first, so a spray of addresses costs bounded memory.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from litestar.types import Scope
from prometheus_client import Counter

from shared.settings import Network

MAX_CLIENTS = 100_000
_XFF = b"x-forwarded-for"
HOUR_S = 3600.0
LIMITED = Counter("signup_api_client_limited_total", "Requests refused 429 by a per-client limit", ["route"])


class ClientLimited(Exception):
    """The client used its allowance: ``429`` + ``Retry-After`` (whole seconds)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("too many requests from this client")
        self.retry_after_s = retry_after_s


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: tuple[Network, ...]) -> str:
    """The client's address: ``peer``, unless ``peer`` is a trusted proxy; then the rightmost address of
    ``X-Forwarded-For`` (all its headers, in order) that is not one. A value that is no address ends the walk
    there (it was written by the client)."""
    address = peer or "unknown"
    if not trusted or not _is_trusted(address, trusted):
        return address
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        try:
            parsed = ipaddress.ip_address(hop)
        except ValueError:
            return address
        address = str(parsed)
        if not any(parsed in network for network in trusted):
            return address
    return address


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in trusted)


@dataclass(frozen=True)
class ClientLimits:
    """The API's two limiters and whose ``X-Forwarded-For`` to believe."""

    trusted: tuple[Network, ...]
    signups: ClientLimiter
    resends: ClientLimiter

    def client_of(self, scope: Scope) -> str:
        """The client's address for the ASGI ``scope`` of a request."""
        peer = scope.get("client")
        forwarded = [value.decode("latin-1") for key, value in scope["headers"] if key.lower() == _XFF]
        return client_address(peer[0] if peer else None, forwarded, self.trusted)


@dataclass
class ClientLimiter:
    """``per_hour`` requests per client per hour, in bursts of up to ``per_hour`` (0: no limit)."""

    route: str
    per_hour: int
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def take(self, client: str) -> None:
        """Spend one request of ``client``'s allowance; raises ``ClientLimited`` when none is left."""
        if self.per_hour == 0:
            return
        now = self.clock()
        rate = self.per_hour / HOUR_S
        tokens, seen = self._buckets.pop(client, (float(self.per_hour), now))
        tokens = min(float(self.per_hour), tokens + (now - seen) * rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            LIMITED.labels(route=self.route).inc()
            raise ClientLimited(math.ceil((1.0 - tokens) / rate))
        self._buckets[client] = (tokens - 1.0, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
