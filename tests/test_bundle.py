"""Bundles (versioned, verified, atomic publish) and the HTTP API without Ray."""

import json
import os
import time

import pytest
from bundles import make_bundle
from fastapi.testclient import TestClient

from genoray.bundle import collect_garbage, current_version, lease, publish, verify_bundle
from genoray.infra.artifacts import ChecksumError, sha256_file
from genoray.predict import Predictor

KEY = "test-key-123"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("bundles")
    v1 = make_bundle(base / "w1", base / "root", k=5, seed=0)
    return base / "root", v1


def test_publish_and_load(root):
    path, v1 = root
    assert current_version(path) == v1
    predictor, doc = Predictor.from_bundle(path)
    assert doc.version == v1 and doc.classes == ("at", "gc") and doc.index.ntotal == 160
    files = [p for p in (path / "versions" / v1).rglob("*") if p.is_file()]
    assert all(not os.access(p, os.W_OK) or os.geteuid() == 0 for p in files)
    assert all((p.stat().st_mode & 0o222) == 0 for p in files)  # published files are read-only


def test_corrupt_or_incomplete_bundle_is_refused(tmp_path):
    v = make_bundle(tmp_path / "w", tmp_path / "r", publish_it=False)
    vdir = tmp_path / "r" / "versions" / v
    shard = vdir / "index" / "shard-00.faiss"
    shard.chmod(0o644)
    data = bytearray(shard.read_bytes())
    data[-50] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="shard-00.faiss"):
        publish(tmp_path / "r", v)
    assert current_version(tmp_path / "r") is None
    (vdir / "head" / "head.npz").chmod(0o644)
    (vdir / "head" / "head.npz").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        verify_bundle(tmp_path / "r", v)


def test_malicious_pickles_in_head_or_bundle_are_never_unpickled(tmp_path):
    """C2: pickle bytes as head.npz (checksums made to match), or a head.pkl added to a bundle,
    are refused without being unpickled."""
    import shutil

    from conftest import malicious_pickle

    from genoray.heads import load_head
    from genoray.infra.artifacts import sha256_file, sha256_json, write_json

    root = tmp_path / "r"
    v1 = make_bundle(tmp_path / "w1", root, seed=0)
    sentinel = tmp_path / "PWNED"
    head = tmp_path / "head"
    shutil.copytree(tmp_path / "w1" / "head", head)
    malicious_pickle(head / "head.npz", sentinel)
    doc = json.loads((head / "head.json").read_text())  # an attacker who can also rewrite the checksums
    doc["payload"]["npz_sha256"] = sha256_file(head / "head.npz")
    doc["sha256"] = sha256_json(doc["payload"])
    write_json(head / "head.json", doc)
    with pytest.raises(ValueError, match="pickle"):
        load_head(head)
    vdir = root / "versions" / v1 / "head"
    vdir.chmod(0o755)
    malicious_pickle(vdir / "head.pkl", sentinel)
    with pytest.raises(ChecksumError, match="not in bundle.json"):
        Predictor.from_bundle(root)
    assert not sentinel.exists()


def test_gc_keeps_current_newest_and_leased(tmp_path):
    root = tmp_path / "r"
    versions = [make_bundle(tmp_path / f"w{i}", root, seed=i, publish_it=False) for i in range(4)]
    publish(root, versions[0])  # CURRENT is the oldest
    lease(root, versions[1], "replica-a")
    removed = collect_garbage(root, keep=1)
    assert removed == [versions[2]]
    assert {p.name for p in (root / "versions").iterdir()} == {versions[0], versions[1], versions[3]}


def client(path, **kw):
    from genoray.serving.backends import plain_app
    from genoray.serving.service import hash_key

    return TestClient(plain_app(str(path), require_key=True, key_hashes=(hash_key(KEY),), **kw))


def test_api_predicts_with_evidence(root):
    path, v1 = root
    c = client(path)
    r = c.post("/v1/predict", json={"sequences": ["GGCCGGCCAT" * 6, "AATTAATTGC" * 6], "k": 3},
               headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bundle_version"] == v1
    assert [p["label"] for p in body["predictions"]] == ["gc", "at"]
    assert len(body["predictions"][0]["neighbours"]) == 3
    assert c.get("/v1/ready").json() == {"ready": True, "bundle_version": v1}
    assert c.get("/v1/health").status_code == 200
    info = c.get("/v1/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["index"]["ntotal"] == 160 and "PredictRequest" in json.dumps(
        c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json())


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": "Basic " + KEY}])
def test_api_requires_key(root, headers):
    r = client(root[0]).post("/v1/predict", json={"sequences": ["ACGT"]}, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_no_keys_configured_is_refused_unless_auth_disabled(root):
    from genoray.serving.backends import plain_app

    with pytest.raises(ValueError, match="GENORAY_API_KEYS"):
        plain_app(str(root[0]), require_key=True)


@pytest.mark.parametrize("payload,status,needle", [
    ('{"sequences": ["ACGT"', 422, "json"),
    ('{"sequences": "ACGT"}', 422, "sequences"),
    ('{"sequences": []}', 422, "sequences"),
    ('{"sequences": ["ACGTXX"]}', 422, "invalid_character: 'X' at position 5"),
    ('{"sequences": ["ACGT"], "k": 0}', 422, "k"),
    ('{"sequences": ["ACGT"], "k": 1000}', 422, "k must be <= 100"),
    ('{"sequences": ["ACGT"], "ids": ["a", "b"]}', 422, "2 ids for 1 sequences"),
    (json.dumps({"sequences": ["A" * 20_000]}), 422, "sequence length 20000 > limit 10000"),
    (json.dumps({"sequences": ["ACGT"] * 10_000}), 422, "at most 64 sequences"),
    (json.dumps({"sequences": ["A" * 10_000_000]}), 413, "larger than"),
])
def test_bad_requests_get_the_right_4xx(root, payload, status, needle):
    c = client(root[0])
    r = c.post("/v1/predict", content=payload, headers={"Authorization": f"Bearer {KEY}",
                                                        "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle.lower() in r.text.lower()
    ok = c.post("/v1/predict", json={"sequences": ["ACGTACGT"]}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200  # still healthy afterwards


def test_holder_swaps_and_refuses_corrupt_bundle(tmp_path):
    from genoray.serving.holder import BundleHolder

    root = tmp_path / "r"
    v1 = make_bundle(tmp_path / "w1", root, seed=0)
    holder = BundleHolder(root, poll_s=0.1)
    try:
        v2 = make_bundle(tmp_path / "w2", root, seed=1)
        deadline = time.time() + 10
        while holder.version != v2 and time.time() < deadline:
            time.sleep(0.05)
        assert holder.version == v2 and holder.swaps == 1
        v3 = make_bundle(tmp_path / "w3", root, seed=2, publish_it=False)
        head = root / "versions" / v3 / "head" / "head.json"
        head.chmod(0o644)
        head.write_text(head.read_text().replace('"k": 10', '"k": 11'))
        bundle_sha = sha256_file(root / "versions" / v3 / "bundle.json")
        (root / "CURRENT").write_text(json.dumps({"version": v3, "bundle_sha256": bundle_sha}))  # a bad publish
        time.sleep(0.5)
        assert holder.version == v2 and "refused bundle" in holder.last_error
        assert v1 != v2
        holder.check()  # healthy while the watcher runs
    finally:
        holder.close()
    holder._thread.join(timeout=5)
    with pytest.raises(RuntimeError, match="watcher stopped"):  # E5: check_health now fails
        holder.check()
    assert holder.describe()["watching"] is False


def test_crash_while_writing_a_bundle_leaves_current_intact(tmp_path, monkeypatch):
    root = tmp_path / "r"
    v1 = make_bundle(tmp_path / "w1", root, seed=0)

    def crash(src, dst):
        raise OSError("killed between staging and rename (injected)")

    monkeypatch.setattr("genoray.bundle.store.os.rename", crash)
    with pytest.raises(OSError, match="injected"):
        make_bundle(tmp_path / "w2", root, seed=1)
    monkeypatch.undo()
    assert current_version(root) == v1 and Predictor.from_bundle(root)[1].version == v1
    assert [p.name for p in (root / "versions").iterdir()] == [v1]  # nothing half-published
    assert not list((root / "staging").iterdir())  # the failed writer cleaned up its staging dir
    orphan = root / "staging" / "vX.dead"
    orphan.mkdir()
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))  # a crashed writer's leftover
    collect_garbage(root)
    assert not orphan.exists() and current_version(root) == v1


PUBLISHER = """
import os, signal, sys
from genoray.bundle import publish
from genoray.pipeline import write_bundle

root, index, head, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
calls = 0


def crashing(fn):
    def step(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:  # SIGKILL: no finally blocks, no cleanup, like a lost node
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return step


for name in ("replace", "rename", "fsync"):  # every durability step of write_bundle + publish
    setattr(os, name, crashing(getattr(os, name)))
publish(root, write_bundle(root, index, head))
print(calls)
"""


@pytest.mark.chaos
def test_publisher_sigkilled_at_every_step(tmp_path):
    """B2: a publishing process SIGKILLed before each rename/replace/fsync (and not at all) leaves
    CURRENT on the old or the new complete verified version; orphans are collected; a rerun publishes."""
    import subprocess
    import sys

    root = tmp_path / "r"
    v1 = make_bundle(tmp_path / "w1", root, seed=0)
    make_bundle(tmp_path / "w2", tmp_path / "scratch", seed=1)  # index + head dirs to publish
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)

    def run(kill_at: int):
        args = [sys.executable, str(script), str(root), str(tmp_path / "w2" / "index"), str(tmp_path / "w2" / "head"),
                str(kill_at)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)

    steps = int(run(0).stdout.strip())  # a clean run: how many steps there are
    assert steps >= 6
    seen = {"old": 0, "new": 0}
    for kill_at in range(1, steps + 1):
        before = set((root / "versions").iterdir())
        proc = run(kill_at)
        assert proc.returncode == -9, proc.stderr[-500:]
        version = current_version(root)
        assert Predictor.from_bundle(root)[1].version == version  # CURRENT always names a verified bundle
        seen["new" if version not in {v1} | {p.name for p in before} else "old"] += 1
        for vdir in (root / "versions").iterdir():  # a version directory is complete or absent
            verify_bundle(root, vdir.name)
        for orphan in (root / "staging").iterdir():
            os.utime(orphan, (time.time() - 7200, time.time() - 7200))
        publish(root, v1)  # roll back so that the next kill starts from the same state
        collect_garbage(root, keep=1)
        assert not list((root / "staging").iterdir())
    assert seen["old"] >= 1 and seen["new"] >= 1, seen  # the kills hit both sides of the flip
    assert run(0).returncode == 0 and current_version(root) != v1


def test_rate_limit_is_per_key(root):
    from genoray.serving.backends import plain_app
    from genoray.serving.service import hash_key

    app = plain_app(str(root[0]), require_key=True, key_hashes=(hash_key("a"), hash_key("b")),
                    limits={"rate_per_key": 0.5, "burst_per_key": 3})
    c = TestClient(app)
    body = {"sequences": ["ACGTACGT"]}
    codes = [c.post("/v1/predict", json=body, headers={"Authorization": "Bearer a"}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = c.post("/v1/predict", json=body, headers={"Authorization": "Bearer a"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert c.post("/v1/predict", json=body, headers={"Authorization": "Bearer b"}).status_code == 200


def test_a_lease_never_recreates_a_removed_root(tmp_path):
    """A replica that still renews after its local bundle root was removed (a test's temp dir, a
    cleaned-up deployment) used to create the root again, leases and all; now it is refused."""
    from genoray.bundle import lease

    root = tmp_path / "gone"
    with pytest.raises(FileNotFoundError, match="the bundle root is gone"):
        lease(root, "v1", "replica-a")
    assert not root.exists()
