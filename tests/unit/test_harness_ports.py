"""The harness's ports for its servers: free, and out of the way of outgoing connections' source ports."""

from __future__ import annotations

import socket

from lab.harness import processes


def test_free_ports_are_below_the_range_outgoing_connections_take_their_ports_from() -> None:
    low = processes._ephemeral_low()
    ports = {processes.free_port() for _ in range(20)}
    assert all(processes.PORTS_FROM <= port < low for port in ports), (sorted(ports), low)
    assert len(ports) > 1  # picked at random, not the same port each time
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))  # and free
