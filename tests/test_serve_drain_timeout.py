"""``genoray serve``'s drain timeout (issue 30): a request still in flight when
``--graceful-shutdown-timeout-s`` (10 s here) is over is cut off, and the exit status says so (7,
``EXIT_CUT_OFF``), after the full timeout and not much later; nothing of the service is left.

The request in flight is made deterministic by a client that sends its headers and only part
of its body: HAProxy has accepted it and forwards it, so its soft stop waits for it, and it can
never finish on its own. The service is tests/test_serve_signals.py's ``Service``."""

import json
import os
import signal
import socket
import time

import pytest
from bundles import make_bundle
from test_serve_signals import GRACE_S, KEY, QUERY, Service, assert_gone

from genoray.infra.ports import free_ports

pytestmark = [pytest.mark.ray, pytest.mark.chaos]
DRAIN_S = 10  # the Service's --graceful-shutdown-timeout-s


def test_a_request_in_flight_past_the_drain_timeout_is_cut_off_with_exit_7(tmp_path):
    make_bundle(tmp_path / "w", tmp_path / "root", seed=0)
    svc = Service(tmp_path / "root", free_ports(3), tmp_path / "serve.log")
    slow = None
    try:
        svc.wait_ready()
        body = json.dumps(QUERY).encode()
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        slow = socket.create_connection(("127.0.0.1", svc.ports[0]), timeout=GRACE_S)
        slow.sendall(head + body[: len(body) // 2])  # the rest never comes
        time.sleep(1.0)  # HAProxy has the request and forwards it
        seen = svc.tree()
        t0 = time.time()
        os.killpg(svc.proc.pid, signal.SIGTERM)
        rc = svc.proc.wait(GRACE_S + DRAIN_S)
        took = time.time() - t0
        assert rc == 7, (rc, svc.text()[-3000:])
        assert DRAIN_S <= took < DRAIN_S + 30, took
        assert "draining (up to 10 s)" in svc.text() and "stopped (the drain timed out)" in svc.text()
        assert_gone(svc, seen)
    finally:
        if slow is not None:
            slow.close()
        svc.close()
