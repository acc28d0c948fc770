"""Key guessing over real HTTP on 127.0.0.1 (issue 25, "failed keys are not rate-limited"):
after ``failed_keys_per_client`` wrong keys from one address within the window, that address
gets 429 with ``Retry-After`` (the right key included) until the window has passed; another
address is not affected; the table of addresses stays bounded. Fails on the code before the
fix (every wrong key was a 401, the right key right after it a 200).
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from genoray.infra.ports import free_port

KEY = "the-right-key"


class InfoBackend:
    """What ``/v1/info`` needs of a backend (auth runs before it)."""

    async def predict(self, req):
        raise AssertionError("not called")

    async def info(self):
        return {"bundle_version": "v1"}


@pytest.fixture
def keyed_server():
    """``create_app`` under uvicorn on 127.0.0.1 (a free port): 3 wrong keys per 1.5 s per address."""
    import uvicorn

    from genoray.config import ServiceLimits
    from genoray.serving.service import create_app, hash_key

    limits = ServiceLimits(failed_keys_per_client=3, failed_keys_window_s=1.5)
    app = create_app(InfoBackend(), key_hashes=(hash_key(KEY),), limits=limits)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield port
    server.should_exit = True
    thread.join(10)


def get_info(port: int, key: str | None, source: str = "127.0.0.1") -> tuple[int, dict, dict]:
    """``GET /v1/info`` from ``source``: status, JSON body, headers (lower-case names)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/v1/info", headers={"Authorization": f"Bearer {key}"} if key else {})
        r = conn.getresponse()
        return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_wrong_keys_lock_the_address_out_until_the_window_passes(keyed_server):
    port = keyed_server
    assert get_info(port, None)[0] == 401  # no key presented: guesses nothing, not counted
    for _ in range(3):
        status, body, _ = get_info(port, "guess")
        assert (status, body) == (401, {"detail": "missing or invalid API key"})
    status, body, headers = get_info(port, KEY)  # the right key, from the locked address
    assert (status, body) == (429, {"detail": "too many wrong API keys from this address"})
    assert headers["retry-after"] in ("1", "2")
    assert get_info(port, "guess")[0] == 429  # a locked address's guesses are not even checked
    assert get_info(port, KEY, source="127.0.0.2")[0] == 200  # another address is not locked
    time.sleep(1.6)
    status, body, _ = get_info(port, KEY)
    assert (status, body["bundle_version"]) == (200, "v1")


def test_the_failure_table_is_a_bounded_lru():
    from genoray.serving.lockout import FailedKeys

    now = [0.0]
    table = FailedKeys(limit=2, window_s=10, max_clients=100, clock=lambda: now[0])
    for i in range(1000):  # an attacker with many addresses
        table.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(table) == 100
    table.failed("victim")
    table.failed("victim")
    assert table.retry_after("victim") == 10
    for i in range(99):  # 99 more addresses: the victim is the oldest of the 100 kept ...
        table.failed(f"10.9.0.{i}")
    assert table.retry_after("victim") == 10 and len(table) == 100
    table.failed("one-more")  # ... and is forgotten first
    assert table.retry_after("victim") == 0 and len(table) == 100
    table.failed("a")
    now[0] = 5.0
    table.failed("a")
    assert table.retry_after("a") == 5
    now[0] = 10.0  # the first failure is 10 s old: out of the window
    assert table.retry_after("a") == 0
    table.failed("a")
    assert table.retry_after("a") == 5  # failures at 5 and 10: locked until 15


def test_behind_haproxy_the_forwarded_address_counts_only_with_the_ingress_secret(monkeypatch):
    from starlette.requests import Request

    from genoray.serving.haproxy import INGRESS_SECRET_ENV
    from genoray.serving.lockout import ClientAddress

    def request(peer: str, *headers: tuple[str, str]) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "client": (peer, 5000)})

    secret = "ab" * 32
    forged = ("X-Forwarded-For", "10.0.0.7")
    tag = ("X-Genoray-Ingress", secret)
    # ingress="proxy": the TCP peer, whatever the headers say
    assert ClientAddress()(request("10.0.0.1", forged, tag)) == "10.0.0.1"
    monkeypatch.delenv(INGRESS_SECRET_ENV, raising=False)
    assert ClientAddress(behind_haproxy=True)(request("127.0.0.1", forged)) is None  # no secret: unknown
    monkeypatch.setenv(INGRESS_SECRET_ENV, secret)
    address = ClientAddress(behind_haproxy=True)
    assert address(request("127.0.0.1", forged, tag)) == "10.0.0.7"  # HAProxy's header, with its secret
    assert address(request("127.0.0.1", forged)) == "127.0.0.1"  # no secret: the peer
    assert address(request("127.0.0.1", forged, ("X-Genoray-Ingress", "ab" * 31 + "ac"))) == "127.0.0.1"
    assert address(request("127.0.0.1", tag)) == "127.0.0.1"  # the secret without an address: the peer
    # two X-Forwarded-For headers never come from HAProxy (it replaces the client's): the peer
    assert address(request("127.0.0.1", forged, ("X-Forwarded-For", "10.0.0.8"), tag)) == "127.0.0.1"
