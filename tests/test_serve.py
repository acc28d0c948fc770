"""Ray Serve over real HTTP on 127.0.0.1: predictions, auth, hot swap under load, replica kill."""

import os
import signal
import time

import pytest

from bundles import make_bundle
from genoray.bundle import publish
from genoray.loadtest import post, run_load

pytestmark = pytest.mark.ray
KEY = "serve-test-key"
QUERY = {"sequences": ["GGCCGGCCAT" * 6, "AATTAATTGC" * 6], "k": 3}


def deploy(root, name, port, **kw):
    from ray import serve

    from genoray.serve import ServeConfig, build_app
    from genoray.service import hash_key

    cfg = ServeConfig(root=str(root), port=port, key_hashes=(hash_key(KEY),), poll_s=0.2, num_cpus=0.1, **kw)
    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
    return f"/{name}"


def test_predict_auth_and_hot_swap_under_load(serve_port, tmp_path):
    from ray import serve

    root = tmp_path / "root"
    v1 = make_bundle(tmp_path / "w1", root, seed=0)
    prefix = deploy(root, "swap", serve_port, min_replicas=2, max_replicas=2)
    try:
        status, body, _ = post(serve_port, f"{prefix}/v1/predict", QUERY, KEY)
        assert status == 200 and b'"label":"gc"' in body
        assert post(serve_port, f"{prefix}/v1/predict", QUERY, None)[0] == 401
        assert post(serve_port, f"{prefix}/v1/predict", {"sequences": ["ACGQ"]}, KEY)[0] == 422
        v2 = make_bundle(tmp_path / "w2", root, seed=1, publish_it=False)
        published = {}

        def tick(results):
            if not published and len(results) > 50:
                publish(root, v2)
                published["at"] = time.time()

        results = run_load(serve_port, f"{prefix}/v1/predict", QUERY, KEY, seconds=12, concurrency=8,
                           max_requests=3000, on_tick=tick)
        failed = [r for r in results if r[2] != 200]
        assert not failed, failed[:3]
        assert published and len(results) > 100
        versions_by_replica = {}
        for t0, _, _, version, replica in sorted(results):
            versions_by_replica.setdefault(replica, []).append(version)
        assert len(versions_by_replica) == 2
        for seq in versions_by_replica.values():  # each replica moves v1 -> v2 exactly once
            changes = [b for a, b in zip(seq, seq[1:]) if a != b]
            assert seq[0] == v1 and seq[-1] == v2 and changes == [v2], seq[:3]
    finally:
        serve.delete("swap")


def test_killed_replica_under_load(serve_port, tmp_path):
    from ray import serve

    root = tmp_path / "root"
    make_bundle(tmp_path / "w1", root, seed=0)
    prefix = deploy(root, "kill", serve_port, min_replicas=2, max_replicas=2)
    try:
        killed = {}

        def tick(results):
            if not killed and len(results) > 50:
                replica = next(r[4] for r in results if r[4])
                pid = int(replica.split("-")[-2])
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid

        results = run_load(serve_port, f"{prefix}/v1/predict", QUERY, KEY, seconds=12, concurrency=8,
                           max_requests=3000, on_tick=tick)
        assert killed
        failed = [r for r in results if r[2] != 200]
        replicas = {r[4] for r in results if r[4]}
        print(f"requests {len(results)}, failed {len(failed)}, replicas seen {len(replicas)}")
        assert len(failed) <= 8, failed[:3]  # at most the requests in flight on the killed replica
        after = [r for r in results if r[0] > results[0][0] + 3 and r[2] != 200]
        assert not after  # once the router knows, nothing fails
        deadline = time.time() + 60
        while time.time() < deadline:  # the replica comes back
            st = serve.status().applications["kill"].deployments["GenorayPredictor"]
            if st.status == "HEALTHY" and st.replica_states.get("RUNNING", 0) == 2:
                break
            time.sleep(0.5)
        assert st.replica_states.get("RUNNING", 0) == 2
    finally:
        serve.delete("kill")
