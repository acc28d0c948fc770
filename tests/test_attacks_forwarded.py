"""The failed-key lockout behind HAProxy (issue 25), over real HTTP through ``genoray serve``'s
default ingress (its own process, its own Ray, real HAProxy).

Clients have different loopback source addresses (Linux routes all of 127.0.0.0/8 to ``lo``).
HAProxy replaces ``X-Forwarded-For`` with the TCP source it saw and adds the ingress secret
(:mod:`genoray.serving.haproxy`); a replica takes the client address from that header only
when the secret matches (:mod:`genoray.serving.lockout`). Checked failing on the code before
(f467b52: every client had HAProxy's address, or whatever ``X-Forwarded-For`` it sent).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bundles import make_bundle
from procs import stop

from genoray.infra.ports import free_port

pytestmark = [pytest.mark.ray]
KEY = "forwarded-test-key"
LIMIT = 3  # wrong keys per client address within the window
A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"



def get_info(port: int, key: str | None, source: str, forwarded: str | None = None,
             extra: dict | None = None) -> tuple[int, dict, dict]:
    """``GET /v1/info`` on 127.0.0.1:``port`` from ``source``: status, JSON body, headers."""
    headers = dict(extra or {})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(source, 0))
    try:
        conn.request("GET", "/v1/info", headers=headers)
        r = conn.getresponse()
        body = r.read()
        return r.status, json.loads(body) if body.startswith(b"{") else {}, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def haproxy_config() -> Path:
    """The config Ray generated and the wrapper edited (``private_dir()/<node id>/haproxy.cfg``)."""
    from genoray.serving.haproxy import private_dir

    found = sorted(private_dir().glob("*/haproxy.cfg"), key=lambda p: p.stat().st_mtime)
    assert found, f"no haproxy.cfg under {private_dir()}"
    return found[-1]


BACKUP = r"^\s*server \S+ [0-9.]+:(\d+) .*\bbackup\b"  # Serve's fallback proxy, HAProxy's backup server


def settled_config(pattern: str, timeout: float = 90) -> str:
    """The newest config's text once it matches ``pattern`` (or at ``timeout``). Ray rewrites
    haproxy.cfg on every reload (it adds the backup server once its fallback proxy is up, which
    can come after the replica answers), and the wrapper adds its rules to the file just before
    the new HAProxy starts: a read in between sees Ray's config without them (two CI runs did)."""
    deadline = time.time() + timeout
    while True:
        text = haproxy_config().read_text()
        if re.search(pattern, text, flags=re.M) or time.time() > deadline:
            return text
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``genoray serve`` (HAProxy ingress, one replica) locking an address out after 3 wrong keys."""
    tmp = tmp_path_factory.mktemp("forwarded")
    root = tmp / "root"
    version = make_bundle(tmp / "w1", root, seed=0)
    port, stats, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ, GENORAY_API_KEYS=KEY)
    for k in ("RAY_ADDRESS", "GENORAY_INGRESS_SECRET", "FORWARDED_ALLOW_IPS", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
              "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"):
        env.pop(k, None)
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "genoray.cli", "serve", str(root), "--port", str(port),
                             "--min-replicas", "1", "--max-replicas", "1", "--stats-port", str(stats),
                             "--metrics-port", str(metrics), "--failed-keys-per-client", str(LIMIT),
                             "--failed-keys-window-s", "120"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:  # this service's bundle answers (not a replica of an earlier run)
            try:
                status, body, _ = get_info(port, KEY, "127.0.0.9")
                if status == 200 and body.get("bundle_version") == version:
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        yield port
    finally:
        stop(proc, 60)
        log.close()


def test_a_guessing_client_is_locked_out_alone_and_a_forged_forwarded_for_changes_nothing(served):
    port = served
    for i in range(LIMIT):  # A guesses, claiming to be B; B keeps working between A's guesses
        status, body, _ = get_info(port, f"guess-{i}", A, forwarded=B)
        assert (status, body) == (401, {"detail": "missing or invalid API key"}), (i, status, body)
        status, body, _ = get_info(port, KEY, B)
        assert (status, body.get("bundle_version") is not None) == (200, True), (i, status, body)
    # A is locked out, the right key included, whatever address it claims
    for forged in (None, B, "10.1.2.3", f"{B}, {C}"):
        status, body, headers = get_info(port, KEY, A, forwarded=forged)
        assert (status, body) == (429, {"detail": "too many wrong API keys from this address"}), (forged, status, body)
        assert 1 <= int(headers["retry-after"]) <= 120
    # neither B (whom A claimed to be) nor C is locked out
    assert get_info(port, KEY, B)[0] == 200
    assert get_info(port, KEY, C, forwarded=A)[0] == 200
    # a client that sends its own ingress secret header is not trusted either
    status, _, _ = get_info(port, KEY, A, forwarded=C, extra={"X-Genoray-Ingress": "guess"})
    assert status == 429


def test_haproxy_replaces_forwarded_for_and_a_replica_reached_directly_trusts_none(served):
    port = served
    text = settled_config("X-Genoray-Ingress")  # Ray's config with the wrapper's rules (the asserts say which)
    frontend = text.split("frontend http_frontend", 1)[1].split("\nbackend ", 1)[0]
    assert "http-request set-header X-Forwarded-For %[src]" in frontend
    assert 'http-request set-header X-Genoray-Ingress "${GENORAY_INGRESS_SECRET}"' in frontend
    assert not re.search(r"[0-9a-f]{64}", text)  # the secret itself is not written to the file
    replicas = re.findall(r"^\s*server \S+ 127\.0\.0\.1:(\d+) check", text, flags=re.M)
    assert replicas, text
    replica = int(replicas[0])
    # straight to the replica from 127.0.0.1 (the address uvicorn trusts by default): a new
    # forged X-Forwarded-For (and a forged secret) on every guess does not make a new client
    for i in range(LIMIT):
        status, _, _ = get_info(replica, f"guess-{i}", "127.0.0.1", forwarded=f"10.9.9.{i}",
                                extra={"X-Genoray-Ingress": "0" * 64})
        assert status == 401, (i, status)
    status, body, _ = get_info(replica, KEY, "127.0.0.1", forwarded="10.9.9.99")
    assert (status, body) == (429, {"detail": "too many wrong API keys from this address"})
    # through HAProxy the replica sees each client's own address: 127.0.0.1's lockout is its own
    assert get_info(port, KEY, "127.0.0.5")[0] == 200


def test_haproxys_backup_server_is_this_services_own_proxy(served):
    """HAProxy's ``backup`` server (Serve's fallback proxy) is on a port of this service's Ray,
    not Ray's fixed 8500 that every Ray on the host shares: there a second service's backup
    traffic reached the first service (another bundle, other keys). Fails on f467b52 (8500)."""
    port = served
    text = settled_config(BACKUP)
    backup = re.findall(BACKUP, text, flags=re.M)
    assert backup and all(int(p) != 8500 for p in backup), (backup, text[-2000:])
    status, body, _ = get_info(int(backup[0]), KEY, "127.0.0.6")  # the backup answers for this service
    assert status == 200 and body.get("bundle_version") == get_info(port, KEY, "127.0.0.6")[1]["bundle_version"]
