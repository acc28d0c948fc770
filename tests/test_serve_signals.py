"""``genoray serve`` stopped as service managers stop it: SIGTERM (systemd, Kubernetes, ``docker stop``)
or SIGINT (Ctrl-C) to its process group, and SIGKILL, each under load from client threads.

Each service runs as a user starts it (``python -m genoray.cli serve``, its own process group,
its own Ray, the default HAProxy ingress, loopback, free ports). After a stop: SIGTERM/SIGINT
exit 0 having answered what was in flight (200, or a clean 503; a new connection may be refused
once the listener is closed, but no connection is reset and nothing times out), SIGKILL may cut
requests off; in every case no process of the service remains (every descendant seen before the
signal is gone), the service, stats and metrics ports can be bound again, and a new
``genoray serve`` on the same ports becomes ready. Two services with their own ports run side by
side meanwhile (one of them is the restart)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from bundles import make_bundle

from bench.loadtest import post, run_load
from genoray.infra.ports import free_ports

pytestmark = [pytest.mark.ray, pytest.mark.chaos]
KEY = "signals-test-key"
QUERY = {"sequences": ["GGCCGGCCAT" * 6, "AATTAATTGC" * 6], "k": 3}
READY_S = 150  # a start on 2 busy cores (usually 10-20 s)
GRACE_S = 45  # the drain (up to --graceful-shutdown-timeout-s 10) plus Serve's and Ray's stop
CLEAN = ("ConnectionRefusedError",)  # after the listener closed: a new connection is refused, cleanly



def bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HAProxy and Serve bind (TIME_WAIT is fine)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            return True
        except OSError:
            return False


class Service:
    """One ``genoray serve`` subprocess in its own process group."""

    def __init__(self, root, ports, log_path):
        self.ports = ports
        self.log_path = log_path
        port, stats, metrics = ports
        env = dict(os.environ, GENORAY_API_KEYS=KEY)
        env.pop("RAY_ADDRESS", None)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genoray.cli", "serve", str(root), "--port", str(port), "--stats-port", str(stats),
             "--metrics-port", str(metrics), "--min-replicas", "1", "--max-replicas", "1",
             "--graceful-shutdown-timeout-s", "10", "--no-access-log", "--json"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self) -> float:
        t0 = time.time()
        while time.time() - t0 < READY_S:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.text()[-3000:]}"
            try:
                if f'"url": "http://127.0.0.1:{self.ports[0]}/v1/predict"' in self.text() \
                        and post(self.ports[0], "/v1/predict", QUERY, KEY, 5)[0] == 200:  # --json's line
                    return time.time() - t0
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"not ready within {READY_S} s: {self.text()[-3000:]}")

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def stop(self, sig, under_load: bool) -> tuple[int | None, list, list[psutil.Process]]:
        """Send ``sig`` to the process group after 30 answers of a load of 8 clients (or at
        once); returns the exit status, the load's results and the processes seen before."""
        seen: list[psutil.Process] = []
        sent: list[float] = []

        def fire(results):
            if not sent and (not under_load or sum(r[2] == 200 for r in results) >= 30):
                seen.extend(self.tree())
                os.killpg(self.proc.pid, sig)
                sent.append(time.time())

        if under_load:
            results = run_load(self.ports[0], "/v1/predict", QUERY, KEY, seconds=8, concurrency=8, max_requests=20000,
                               on_tick=fire)
        else:
            results = []
            fire(results)
        assert sent, f"the load never got 30 answers: {results[:3]}"
        try:
            rc = self.proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, [r for r in results if r[0] + r[1] >= sent[0] - 0.5], seen

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def assert_gone(svc: Service, seen: list[psutil.Process]):
    """Nothing the service started is running after a few seconds, and its ports can be bound."""
    deadline = time.time() + 10
    while True:
        alive = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        busy = [p for p in svc.ports if not bindable(p)]
        if not alive and not busy:
            return
        if time.time() > deadline:
            raise AssertionError(f"left behind: {[(p.pid, p.name()) for p in alive]}, ports in use: {busy}\n"
                                 f"{svc.text()[-2000:]}")
        time.sleep(0.2)


def assert_clean_stop(rc, around: list, svc: Service):
    """SIGTERM/SIGINT: exit 0; every request around the signal answered 200 or 503, or refused."""
    assert rc == 0, f"exit {rc}: {svc.text()[-3000:]}"
    statuses = {r[2] for r in around}
    bad = [r for r in around if r[2] not in (200, 503) and not (r[2] == 0 and any(c in r[3] for c in CLEAN))]
    assert not bad, f"{len(bad)} of {len(around)} requests around the signal failed uncleanly: {bad[:5]}"
    assert 200 in statuses, statuses  # the load really was running when the signal came
    assert "draining" in svc.text() and "genoray serve: stopped" in svc.text()


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signals")
    make_bundle(tmp / "w1", tmp / "root", seed=0)
    return tmp / "root"


def test_sigterm_drains_then_restart_and_second_service_side_by_side_then_sigint(bundle_root, tmp_path):
    from genoray.serving.haproxy import private_dir

    haproxy_dir = private_dir()
    before = {p.name for p in haproxy_dir.iterdir()} if haproxy_dir.is_dir() else set()
    ports_a, ports_b = free_ports(3), free_ports(3)
    a = Service(bundle_root, ports_a, tmp_path / "a.log")
    try:
        a.wait_ready()
        assert f"stats 127.0.0.1:{ports_a[1]}, metrics 127.0.0.1:{ports_a[2]}" in a.text()
        assert {p.name for p in haproxy_dir.iterdir()} - before  # its HAProxy config and sockets, while it runs
        rc, around, seen = a.stop(signal.SIGTERM, under_load=True)
        assert_clean_stop(rc, around, a)
        assert_gone(a, seen)
        # a stopped service leaves none of its HAProxy files behind (they piled up, one dir a run)
        assert not haproxy_dir.is_dir() or {p.name for p in haproxy_dir.iterdir()} <= before
    finally:
        a.close()

    # a restart on the same ports, and a second service with its own ports, side by side
    a2, b = Service(bundle_root, ports_a, tmp_path / "a2.log"), Service(bundle_root, ports_b, tmp_path / "b.log")
    try:
        a2.wait_ready()
        b.wait_ready()
        b_results: list = []
        b_load = threading.Thread(target=lambda: b_results.extend(
            run_load(ports_b[0], "/v1/predict", QUERY, KEY, seconds=6, concurrency=2, max_requests=5000)))
        b_load.start()
        rc, around, seen = a2.stop(signal.SIGINT, under_load=True)
        b_load.join()
        assert_clean_stop(rc, around, a2)
        assert_gone(a2, seen)
        # the other service did not notice
        assert b_results and {r[2] for r in b_results} == {200}, {r[2] for r in b_results}
        assert post(ports_b[0], "/v1/predict", QUERY, KEY)[0] == 200
    finally:
        a2.close()
        b.close()


def test_sigkill_leaves_nothing_listening_and_a_restart_is_ready_then_a_second_sigterm_forces(bundle_root, tmp_path):
    ports = free_ports(3)
    svc = Service(bundle_root, ports, tmp_path / "k.log")
    try:
        svc.wait_ready()
        rc, around, seen = svc.stop(signal.SIGKILL, under_load=True)
        assert rc == -signal.SIGKILL
        # cut off requests fail at the connection; none gets a wrong status
        assert {r[2] for r in around} <= {0, 200, 503}, {r[2] for r in around}
        assert_gone(svc, seen)  # HAProxy and Ray died with it
    finally:
        svc.close()
    again = Service(bundle_root, ports, tmp_path / "k2.log")
    try:
        again.wait_ready()
        # a second signal during the stop forces a fast exit (7: in-flight requests may be cut off)
        seen = again.tree()
        t0 = time.time()
        os.killpg(again.proc.pid, signal.SIGTERM)
        while "draining" not in again.text() and time.time() - t0 < 10:
            time.sleep(0.05)
        os.killpg(again.proc.pid, signal.SIGTERM)
        rc = again.proc.wait(GRACE_S)
        assert rc == 7 and time.time() - t0 < 10, (rc, time.time() - t0, again.text()[-3000:])
        assert_gone(again, seen)
    finally:
        again.close()
