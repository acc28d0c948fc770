"""Object storage end to end against a real S3 protocol server (moto on 127.0.0.1, no network):
embed s3:// -> s3:// (killed mid-way and resumed), index, train, publish to an s3:// bundle
root, serve from it and swap; a publisher killed mid-publish leaves CURRENT old or new."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import s3
from conftest import toy_fasta

from genoray.encoders.kmer import KmerEncoder
from genoray.infra import fs
from genoray.sequences import read_sequences

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each builds real artifacts and moves them through S3 (5-120 s)


def _inputs(tmp_path: Path, bucket: str, files: int = 6, n: int = 40) -> list[str]:
    """``files`` toy FASTA files uploaded under ``bucket/in``; returns every record id."""
    ids = []
    (tmp_path / "in").mkdir()
    for i in range(files):
        f = toy_fasta(tmp_path / "in" / f"part{i}.fa", n=n, seed=i, prefix=f"f{i}_")
        ids += read_sequences(f)[0]["seq_id"].to_pylist()
    fs.upload_dir(tmp_path / "in", f"{bucket}/in")
    return ids


def _store_ids(store: str) -> list[str]:
    from genoray.embedding.store import EmbeddingStore

    return EmbeddingStore(store).table()["seq_id"].to_pylist()


EMBED_SLOWLY = textwrap.dedent("""
    import sys, time
    import genoray.embedding.unit as u
    from genoray.embedding import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    real = u.embed_table
    def slow(enc, batch):  # a slow model, so the kill lands between units
        time.sleep(0.4)
        return real(enc, batch)
    u.embed_table = slow
    embed_sequences(sys.argv[1], sys.argv[2], KmerEncoder(), use_ray=False)
""")


@pytest.mark.timeout(180)
def test_embed_killed_midway_resumes_exactly_once(s3_bucket, tmp_path):
    """The embedding driver is SIGKILLed after some units committed on S3; the rerun skips
    them and the store holds every input record exactly once."""
    from genoray.embedding.job import embed_sequences

    ids = _inputs(tmp_path, s3_bucket)
    store = f"{s3_bucket}/store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", EMBED_SLOWLY, f"{s3_bucket}/in/", store], env=env)
    deadline = time.time() + 120
    markers: list[str] = []
    while time.time() < deadline and proc.poll() is None:
        markers = [f for f in fs.list_files(f"{store}/shards") if f.endswith(".done.json")]
        if len(markers) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(markers) < 6
    assert not fs.is_file(f"{store}/store.json")  # nothing claims the store is complete
    rep = embed_sequences(f"{s3_bucket}/in/", store, KmerEncoder(), use_ray=False)
    assert rep.skipped >= 2 and rep.units == 6 and rep.status == "complete"
    assert rep.read == rep.written == len(ids)
    got = _store_ids(store)
    assert sorted(got) == sorted(ids) and len(set(got)) == len(got)


def _pipeline(tmp_path: Path, bucket: str, seed: int, use_ray: bool) -> tuple[str, str]:
    """embed s3 -> s3 store, index and head on s3; returns (index, head) URIs."""
    from genoray.config import HeadConfig
    from genoray.embedding.job import embed_sequences
    from genoray.index import build_index
    from genoray.pipeline.train import train_head

    w = f"{bucket}/w{seed}"
    (tmp_path / f"in{seed}").mkdir()
    toy_fasta(tmp_path / f"in{seed}" / "toy.fa", seed=seed)
    toy_fasta(tmp_path / f"in{seed}" / "more.fa", n=60, seed=seed + 10, prefix="m")
    fs.upload_dir(tmp_path / f"in{seed}", f"{w}/in")
    rep = embed_sequences(f"{w}/in", f"{w}/store", KmerEncoder(), use_ray=use_ray)
    assert rep.status == "complete" and rep.written == 260
    idx = build_index(f"{w}/store", f"{w}/index", use_ray=use_ray)
    assert idx.path == f"{w}/index" and idx.ntotal == 208  # the train split
    assert fs.is_file(f"{w}/index/manifest.json") and not fs.list_files(f"{w}/index/parts")
    head = train_head(f"{w}/store", f"{w}/index", f"{w}/head", HeadConfig(k=5, C=1.0))
    assert head["head"] == f"{w}/head" and fs.is_file(f"{w}/head/head.json")
    return f"{w}/index", f"{w}/head"


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_s3_end_to_end_embed_index_train_publish_serve_swap(ray_session, serve_port, s3_bucket, tmp_path, monkeypatch):
    """Every artifact on S3: Ray embeds s3:// inputs into an s3:// store (workers get the
    endpoint through the forwarded environment), the index and head are written to s3://,
    bundles are published to an s3:// root, and both an in-process app and Ray Serve replicas
    (started by the session Ray before the S3 settings existed: they get them through the
    replicas' runtime_env) serve from it over HTTP and swap."""
    from fastapi.testclient import TestClient
    from ray import serve

    from bench.loadtest import post
    from genoray.bundle import collect_garbage, current_version, list_versions, publish
    from genoray.config import ServeConfig
    from genoray.pipeline import write_bundle
    from genoray.serving.app import build_app
    from genoray.serving.backends import LocalBackend
    from genoray.serving.holder import BundleHolder
    from genoray.serving.service import create_app

    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "cache"))
    root = f"{s3_bucket}/bundles"
    index1, head1 = _pipeline(tmp_path, s3_bucket, seed=0, use_ray=True)
    v1 = write_bundle(root, index1, head1, metrics={"seed": 0})
    assert current_version(root) is None
    publish(root, v1)
    assert current_version(root) == v1
    holder = BundleHolder(root, poll_s=0.1)
    serve.run(build_app(ServeConfig(root=root, port=serve_port, ingress="proxy", require_key=False, poll_s=0.2,
                                    num_cpus=0.1, min_replicas=1, max_replicas=1)), name="s3", route_prefix="/s3")
    query = {"sequences": ["GGCCGGCCAT" * 6], "k": 3}
    try:
        status, body, _ = post(serve_port, "/s3/v1/predict", query, None)
        assert status == 200 and json.loads(body)["bundle_version"] == v1, body[:300]
        c = TestClient(create_app(LocalBackend(holder), require_key=False))
        r = c.post("/v1/predict", json={"sequences": ["GGCCGGCCAT" * 6, "AATTAATTGC" * 6], "k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["bundle_version"] == v1 and [p["label"] for p in r.json()["predictions"]] == ["gc", "at"]
        leases = fs.list_files(f"{root}/leases/{v1}")  # this holder's and the Serve replica's
        assert holder.version == v1 and holder.holder in leases and len(leases) == 2
        index2, head2 = _pipeline(tmp_path, s3_bucket, seed=1, use_ray=False)
        v2 = write_bundle(root, index2, head2)
        assert fs.read_json(f"{root}/versions/{v2}/bundle.json")["parent"] == v1
        publish(root, v2)
        deadline = time.time() + 30
        while holder.version != v2 and time.time() < deadline:
            time.sleep(0.05)
        assert holder.version == v2 and holder.swaps == 1 and holder.last_error is None
        r = c.post("/v1/predict", json={"sequences": ["GGCCGGCCAT" * 6], "k": 3})
        assert r.status_code == 200 and r.json()["bundle_version"] == v2  # serves the new version
        deadline = time.time() + 60
        while json.loads(post(serve_port, "/s3/v1/predict", query, None)[1]).get("bundle_version") != v2:
            assert time.time() < deadline, "the Serve replica did not swap to the new s3:// version"
            time.sleep(0.2)
        while fs.list_files(f"{root}/leases/{v1}") and time.time() < deadline:
            time.sleep(0.2)
        assert not fs.list_files(f"{root}/leases/{v1}")  # the old lease was released (by both holders)
    finally:
        holder.close()
        serve.delete("s3")
    rows = list_versions(root, verify=True)
    assert [(r["version"], r["current"], r["verified"]) for r in rows] == [(v1, False, "ok"), (v2, True, "ok")]
    cached = tmp_path / "cache" / "bundles"
    assert all((p.stat().st_mode & 0o222) == 0 for p in cached.rglob("*") if p.is_file())  # read-only copies
    assert collect_garbage(root, keep=1) == [v1] and current_version(root) == v2
    assert not fs.list_files(f"{root}/versions/{v1}")


PUBLISHER = textwrap.dedent("""
    import os, signal, sys
    import genoray.infra.conditional as conditional
    import genoray.infra.fs as fs
    from genoray.bundle import publish
    from genoray.pipeline import write_bundle

    root, index, head, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = 0

    def crashing(fn):
        def step(*args, **kwargs):
            global calls
            if fs.is_remote(args[-1] if fn.__name__ == "upload" else args[0]):
                calls += 1
                if calls == kill_at:  # SIGKILL before this object write: no cleanup, like a lost node
                    os.kill(os.getpid(), signal.SIGKILL)
                if calls == -kill_at:  # ... or right after it
                    fn(*args, **kwargs)
                    os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return step

    for name in ("upload", "write_bytes"):  # every object PUT of write_bundle + publish
        setattr(fs, name, crashing(getattr(fs, name)))
    conditional.write_if = crashing(conditional.write_if)  # CURRENT's conditional PUT
    publish(root, write_bundle(root, index, head))
    print(calls)
""")


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_s3_publisher_killed_mid_publish_leaves_current_old_or_new(s3_bucket, tmp_path):
    """A publisher SIGKILLed before each object PUT (uploads of the version, bundle.json,
    CURRENT) leaves CURRENT naming the old or the new complete version, never anything else."""
    from genoray.bundle import collect_garbage, current_version, list_versions, publish
    from genoray.pipeline import write_bundle
    from genoray.predict import Predictor

    def versions(root):  # complete versions: those with a bundle.json
        return [r["version"] for r in list_versions(root) if "error" not in r]

    env = {**os.environ, "PYTHONPATH": str(ROOT), "GENORAY_CACHE": str(tmp_path / "cache")}
    os.environ["GENORAY_CACHE"] = env["GENORAY_CACHE"]
    try:
        root = f"{s3_bucket}/bundles"
        index1, head1 = _pipeline(tmp_path, s3_bucket, seed=0, use_ray=False)
        v1 = write_bundle(root, index1, head1)
        publish(root, v1)
        index2, head2 = _pipeline(tmp_path, s3_bucket, seed=1, use_ray=False)

        def run(kill_at: int):
            return subprocess.run([sys.executable, "-c", PUBLISHER, root, index2, head2, str(kill_at)],
                                  capture_output=True, text=True, timeout=120, env=env)

        first = run(0)
        assert first.returncode == 0, first.stderr[-800:]
        steps = int(first.stdout.strip())  # object PUTs of one write + publish (the last is CURRENT)
        assert steps >= 5
        publish(root, v1)
        # content-addressed: each run must find only v1's objects, so that it uploads the same ones
        collect_garbage(root, keep=0, object_grace_s=0)
        seen = {"old": 0, "new": 0}
        # before the first upload, mid-upload, before bundle.json, before CURRENT; after CURRENT
        for kill_at in (1, steps // 2, steps - 1, steps, -steps):
            before = set(versions(root))
            proc = run(kill_at)
            assert proc.returncode == -9, proc.stderr[-800:]
            version = current_version(root)
            assert Predictor.from_bundle(root)[1].version == version  # CURRENT always names a verified bundle
            seen["new" if version not in before else "old"] += 1
            for v in versions(root):  # a version with bundle.json is complete
                Predictor.from_bundle(root, v)
            publish(root, v1)
            collect_garbage(root, keep=0, object_grace_s=0)
        assert seen == {"old": 4, "new": 1}, seen
        assert set(versions(root)) >= {v1}
        collect_garbage(root, keep=1)
        assert current_version(root) == v1
    finally:
        os.environ.pop("GENORAY_CACHE", None)


@pytest.mark.timeout(600)
def test_s3_reindex_two_nights_incremental(s3_bucket, tmp_path, monkeypatch):
    """``reindex`` with its work dir and bundle root on S3: the first night builds and
    publishes, the second embeds only the new file, adds a delta to the current index (read
    from the node-local copy of the published bundle) and publishes; gate.json lands on S3."""
    from genoray.bundle import current_version
    from genoray.config import IndexConfig
    from genoray.pipeline.reindex import ReindexConfig, reindex
    from genoray.predict import Predictor

    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in").mkdir()
    toy_fasta(tmp_path / "in" / "a.fa", n=400, seed=1, prefix="n1_")
    toy_fasta(tmp_path / "in" / "b.fa", n=100, seed=2, prefix="n2_")
    fs.upload_dir(tmp_path / "in", f"{s3_bucket}/in")
    work, root = f"{s3_bucket}/work", f"{s3_bucket}/bundles"
    cfg = ReindexConfig(index=IndexConfig(index_type="IVF8,Flat", target_recall=0.9), recall_floor=0.9)
    r1 = reindex([f"{s3_bucket}/in/a.fa"], work, root, KmerEncoder(), cfg=cfg, use_ray=False)
    assert r1.published and current_version(root) == r1.version and r1.gate["index_build"]["mode"] == "full"
    r2 = reindex([f"{s3_bucket}/in/a.fa", f"{s3_bucket}/in/b.fa"], work, root, KmerEncoder(), cfg=cfg, use_ray=False)
    assert r2.published and r2.embed["units_skipped"] == 1 and r2.embed["written"] == 500
    assert r2.gate["index_build"]["mode"] == "incremental" and r2.gate["index_build"]["delta_rows"] == 80
    # yesterday's calibration set came back from S3 with the bundle: the exact pass read the 80 new rows only
    assert r2.gate["index_build"]["recall_check"] == "updated" and r2.gate["index_build"]["exact_rows_read"] == 80
    assert fs.read_json(f"{work}/builds/{r2.version}/gate.json")["passed"] is True
    pred, doc = Predictor.from_bundle(root)
    assert doc.version == r2.version and pred.index.ntotal == 400


@pytest.mark.timeout(300)
def test_cli_on_s3_and_clear_errors(s3_bucket, tmp_path, monkeypatch, capsys):
    """The README's commands with s3:// paths; a missing bucket or object is named in the error."""
    import json

    from genoray.cli import main

    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in").mkdir()
    toy_fasta(tmp_path / "in" / "toy.fa", extra=(("bad label=gc split=train", "ACGTXXXX"),))
    fs.upload_dir(tmp_path / "in", f"{s3_bucket}/in")
    b = s3_bucket
    assert main(["embed", f"{b}/in/", "--out", f"{b}/store", "--no-ray"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["read"] == 201 and out["written"] == 200 and out["rejects_tables"][0].startswith(f"{b}/store/shards/")
    assert fs.read_table(out["rejects_tables"][0])["seq_id"].to_pylist() == ["bad"]
    assert main(["index", f"{b}/store", "--out", f"{b}/index"]) == 0
    assert main(["train", f"{b}/store", "--index", f"{b}/index", "--out", f"{b}/head"]) == 0
    assert main(["publish", f"{b}/bundles", "--index", f"{b}/index", "--head", f"{b}/head"]) == 0
    capsys.readouterr()
    assert main(["bundles", f"{b}/bundles"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("* v")  # the published version is CURRENT
    capsys.readouterr()
    assert main(["evaluate", f"{b}/store", "--index", f"{b}/index", "--head", f"{b}/head", "--json"]) == 0
    assert '"fused"' in capsys.readouterr().out
    assert main(["predict", f"{b}/in/toy.fa", "--index", f"{b}/index", "--head", f"{b}/head"]) == 0
    assert "gc" in capsys.readouterr().out
    assert main(["index", f"{b}/store", "--out", f"{b}/index"]) == 2
    assert f"{b}/index: already holds manifest.json" in capsys.readouterr().err  # never edited in place
    assert main(["index", "s3://no-such-bucket-xyz/store", "--out", f"{b}/index2"]) == 2
    assert "s3://no-such-bucket-xyz/store: not an embedding store" in capsys.readouterr().err
    assert main(["embed", "s3://no-such-bucket-xyz/in.fa", "--out", f"{b}/s2", "--no-ray"]) == 2
    assert "s3://no-such-bucket-xyz/in.fa" in capsys.readouterr().err


def test_prediction_file_on_s3_is_put_whole_or_not_at_all(s3_bucket):
    """``genoray predict --out s3://...``: the file appears in one upload at the end; an interrupted
    run (``commit=False``) puts nothing there."""
    from genoray.predict.output import PredictionWriter

    row = {"seq_id": "a", "label": "x", "ood_score": 0.5, "probabilities": {"x": 0.75, "y": 0.25}, "neighbours": []}
    for fmt in ("jsonl", "tsv", "parquet"):
        w = PredictionWriter(f"{s3_bucket}/pred.{fmt}", fmt, ["x", "y"])
        w.write([row, {**row, "seq_id": "b"}])
        assert not fs.is_file(f"{s3_bucket}/pred.{fmt}")  # nothing visible before close
        w.close()
        assert fs.is_file(f"{s3_bucket}/pred.{fmt}")
    assert [json.loads(line)["seq_id"] for line in fs.read_bytes(f"{s3_bucket}/pred.jsonl").decode().splitlines()] == \
        ["a", "b"]
    w = PredictionWriter(f"{s3_bucket}/cut.jsonl", "jsonl", ["x", "y"])
    w.write([row])
    w.close(commit=False)
    assert not fs.is_file(f"{s3_bucket}/cut.jsonl") and not os.path.exists(w.path)


def test_serving_nodes_fetch_only_their_groups_files_and_drop_unleased_versions(s3_bucket, tmp_path, monkeypatch):
    """On a remote root a searcher replica's node downloads only its shard group's files, the
    model replica only the head and the index manifest, the serve driver sizes replicas without
    downloading anything, and fetching a new version drops this node's copies of versions that
    are not CURRENT and that no replica leases."""
    from test_serve_groups import build_indexes

    from genoray.bundle import evict_unleased, lease, publish, read_version, release, version_dir
    from genoray.config import ServeConfig
    from genoray.infra.fs import cache_dir
    from genoray.pipeline import write_bundle
    from genoray.serving.replica_memory import grouped_actor_options, replica_actor_options
    from genoray.serving.scatter import GroupIndex

    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "cache"))
    built = build_indexes(tmp_path / "data", n=600)
    root = f"{s3_bucket}/bundles"
    v1 = write_bundle(root, built["flat4"], built["head"], shard_groups=2)
    publish(root, v1)
    doc = read_version(root, v1)
    versions = cache_dir("bundles", root) / "versions"
    shutil.rmtree(tmp_path / "cache")  # publish verified v1 in a node-local copy; serving nodes start empty

    cfg = ServeConfig(root=root, require_key=False)
    options = replica_actor_options(cfg, doc)
    _, searchers = grouped_actor_options(cfg, options, doc, 2)
    assert options["memory"] > 0 and all(s["memory"] > 0 for s in searchers)
    assert not versions.exists()  # the driver sized the replicas from the store's sizes alone

    def fetched() -> dict[str, set[str]]:
        return {d.name: {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} for d in versions.iterdir()}

    g0, g1 = GroupIndex(root, v1, 0), GroupIndex(root, v1, 1)
    copies = fetched()
    assert len(copies) == 2 and all("+" in name for name in copies)  # two partial copies, no whole one
    shard_files = {f for f in doc.files if f.startswith("index/") and ("shard" in f or "ids" in f)}
    per_group = [c & shard_files for c in copies.values()]
    assert per_group[0] and per_group[1] and not per_group[0] & per_group[1]  # disjoint: each its own shards
    assert all(not any(f.startswith("head/") for f in c) for c in copies.values())
    assert sorted([*g0.gids, *g1.gids]) == list(range(doc.index.ntotal))  # every row in exactly one group

    # a second version: fetching it drops v1's copies once no replica leases v1
    lease(root, v1, "replica-a")
    v2 = write_bundle(root, built["ivf4"], built["head"], shard_groups=2)
    publish(root, v2)
    shutil.rmtree(versions / v2)  # the publisher's whole copy of v2
    GroupIndex(root, v2, 0)
    assert {n.split("+")[0] for n in fetched()} == {v1, v2}  # v1 is leased: kept
    release(root, v1, "replica-a")
    version_dir(root, v2, [f for f in read_version(root, v2).files if f.startswith("head/")])
    assert {n.split("+")[0] for n in fetched()} == {v1, v2}  # unleased, but fetched a moment ago: kept
    assert evict_unleased(root, min_age_s=0) and {n.split("+")[0] for n in fetched()} == {v2}
