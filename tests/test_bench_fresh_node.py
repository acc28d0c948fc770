"""The replica steps ``bench/bench_cluster.py --fresh-node`` times, without the cluster: on a
moto S3 root, a node with an empty cache downloads exactly the version's objects, answers over
HTTP, and, moved to a +1% night, downloads exactly the objects it lacked and answers with the
new version (so the bench's byte counts and its version checks hold)."""

from __future__ import annotations

import pytest
import s3

from bench.fresh_node import FreshReplica, predict, publish_night, publish_versions, version_size
from genoray.bundle import read_version
from genoray.infra import fs
from genoray.infra.ports import free_port

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py

pytestmark = pytest.mark.slow  # builds and publishes two real versions through S3 (~15 s)


def test_cold_node_then_warm_move(s3_bucket, tmp_path, monkeypatch):
    root = f"{s3_bucket}/bundles"
    publisher, node = tmp_path / "publisher-cache", tmp_path / "node-cache"
    monkeypatch.setenv("GENORAY_CACHE", str(publisher))
    v1 = publish_versions(tmp_path / "work", 4000, root, index_type="IVF16,Flat")["v1"]

    monkeypatch.setenv("GENORAY_CACHE", str(node))  # a fresh node: empty cache
    replica = FreshReplica(root)
    try:
        cold = replica.fetch(v1)
        assert cold["downloaded"] == version_size(v1, root) > 0
        assert replica.serve(port := free_port())["version"] == v1
        seqs = ["ACGT" * 50, "GGCCAATT" * 25]
        assert predict(port, seqs)[1] == v1

        monkeypatch.setenv("GENORAY_CACHE", str(publisher))
        night = publish_night(tmp_path / "work", 4000, 1, root, index_type="IVF16,Flat")
        v2 = night["v2"]
        assert night["mode"] == "extended", night
        old, new = (set(read_version(root, v).files.values()) for v in (v1, v2))
        lacked = sum(fs.info(fs.join(root, "objects", d[:2], d))[1] for d in new - old)

        monkeypatch.setenv("GENORAY_CACHE", str(node))
        warm = replica.fetch(v2)
        assert warm["downloaded"] == lacked
        assert 0 < lacked < version_size(v2, root) / 2, (lacked, version_size(v2, root))
        assert replica.move(v2)["version"] == v2
        assert predict(port, seqs)[1] == v2
    finally:
        replica.stop()
