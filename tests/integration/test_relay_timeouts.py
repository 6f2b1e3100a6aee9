"""The relay's Redis connections time out, so that a dead or partitioned Redis cannot hold a batch forever."""

from __future__ import annotations

import msgspec

from services.relay.relay import build_relay
from shared.broker import SOCKET_TIMEOUT_S, StreamsBroker
from shared.settings import Settings


def test_the_relays_redis_connections_time_out_and_keep_the_urls_other_options(settings: Settings) -> None:
    url = settings.redis_url.rsplit("/", 1)[0] + "/3?client_name=relay-test"
    relay = build_relay(msgspec.structs.replace(settings, redis_url=url))
    broker = relay.broker
    assert isinstance(broker, StreamsBroker)
    pool = broker.client.connection_pool
    connection = pool.get_connection()  # connects: the options are Redis's to accept
    try:
        assert connection.socket_timeout == SOCKET_TIMEOUT_S
        assert connection.socket_connect_timeout == SOCKET_TIMEOUT_S
        assert (connection.db, connection.client_name) == (3, "relay-test")
        assert broker.client.client_getname() == "relay-test"
    finally:
        pool.release(connection)
        broker.close()
    assert relay.settings.redis_url == url
