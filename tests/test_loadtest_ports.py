"""The tests' free-port helper: ports outside the kernel's ephemeral range, never reused.

A port picked with ``bind(0)`` comes from the ephemeral range, where any outgoing connection (Ray
opens many) can take it before the server binds it: one CI run failed when HAProxy found its
stats port in use that way.
"""

import socket
from pathlib import Path

from bench import loadtest
from bench.loadtest import PORT_LOW, free_port, free_ports


def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_are_distinct_outside_the_ephemeral_range_and_bindable():
    ports = free_ports(200)
    assert len(set(ports)) == 200
    assert all(PORT_LOW <= p < ephemeral_low() for p in ports), sorted(ports)[:3] + sorted(ports)[-3:]
    for p in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_or_handed_out_before_is_skipped(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        busy = held.getsockname()[1]
        given = free_port()
        tries = iter([busy, given, PORT_LOW + 7])  # in use, handed out before, then a fresh one

        class Pick:
            def randrange(self, lo, hi):
                return next(tries)

        monkeypatch.setattr(loadtest, "_pick", Pick())
        monkeypatch.setattr(loadtest, "PORT_LOW", 0)  # let the held (ephemeral) port be tried
        assert free_port() == PORT_LOW + 7
