"""genoray.infra.ports: free ports outside the kernel's ephemeral range, never handed out twice.

A port picked with ``bind(0)`` comes from the ephemeral range, where any outgoing connection or
other ``bind(0)`` (Ray opens many) can take it before the server binds it: one CI run failed
when HAProxy found its stats port in use that way.
"""

import socket

from genoray.infra import ports
from genoray.infra.ports import PORT_HIGH, PORT_LOW, ephemeral_low, free_port, free_ports


class Scripted:
    """A stand-in for the module's random generator that yields the given ports in order."""

    def __init__(self, *seq: int) -> None:
        self.seq = iter(seq)

    def randrange(self, lo: int, hi: int) -> int:
        return next(self.seq)


def test_ports_are_distinct_outside_ray_serves_and_the_ephemeral_range_and_bindable():
    got = free_ports(200)
    assert len(set(got)) == 200
    assert all(PORT_LOW <= p < min(PORT_HIGH, ephemeral_low()) for p in got), (min(got), max(got))
    for p in got[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_or_handed_out_before_is_skipped(monkeypatch):
    monkeypatch.setattr(ports, "_given", set())
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        busy = held.getsockname()[1]
        monkeypatch.setattr(ports, "_pick", Scripted(PORT_LOW + 5, busy, PORT_LOW + 5, PORT_LOW + 7))
        assert free_port() == PORT_LOW + 5
        assert free_port() == PORT_LOW + 7  # not the port in use, not the one handed out before


def test_one_call_returns_distinct_ports_even_when_the_draw_repeats(monkeypatch):
    monkeypatch.setattr(ports, "_given", set())
    monkeypatch.setattr(ports, "_pick", Scripted(PORT_LOW + 11, PORT_LOW + 11, PORT_LOW + 12))
    assert free_ports(2) == [PORT_LOW + 11, PORT_LOW + 12]  # the first is held while the second is drawn


def test_no_room_below_the_ephemeral_range_falls_back_to_the_kernel(monkeypatch):
    kernel_low = ephemeral_low()
    monkeypatch.setattr(ports, "ephemeral_low", lambda: PORT_LOW + 10)
    assert all(p >= kernel_low for p in free_ports(3))  # bind(0): the kernel's ephemeral range
