"""Free TCP ports for a server that a process is about to start (or have Ray start).

``bind(0)`` hands out a port from the kernel's ephemeral range, where any outgoing connection,
and any other ``bind(0)`` (Ray's processes open many), may take it in the seconds before the
server binds it; a CI run once failed when HAProxy found its stats port taken that way.
:func:`free_ports` picks at random from 20000-29999 instead: above Ray's worker ports
(10002-19999 by default), below Serve's replica ports (30000-31000, direct ingress) and the
ephemeral range (32768 up on Linux). It checks that each port is bindable and never hands out a
port twice in one process. A process that binds fixed ports in that range can still take one
before the server binds it; nothing in genoray or Ray does.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

PORT_LOW = 20000  # above Ray's default worker ports (10002-19999)
PORT_HIGH = 30000  # below Serve's replica ports (RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT's default)
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()  # ports this process handed out
_pick = random.SystemRandom()  # not the global generator, which a caller may seed


def ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (Linux's default 32768 where unknown)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int, host: str = "127.0.0.1", tries: int = 500) -> list[int]:
    """``n`` distinct TCP ports bindable on ``host`` now, from ``PORT_LOW`` up to ``PORT_HIGH`` or
    the ephemeral range, whichever is lower; from the kernel (``bind(0)``) where that leaves fewer
    than 1,000 ports."""
    high = min(PORT_HIGH, ephemeral_low())
    socks: list[socket.socket] = []
    try:  # every socket held until all n are chosen: n distinct ports
        for _ in range(tries):
            if len(socks) == n:
                break
            port = _pick.randrange(PORT_LOW, high) if high - PORT_LOW >= 1000 else 0
            if port in _given:
                continue
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        if len(socks) < n:
            raise RuntimeError(f"found {len(socks)} of {n} free TCP ports on {host} in {tries} tries")
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    _given.update(ports)
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One port of :func:`free_ports`."""
    return free_ports(1, host)[0]
