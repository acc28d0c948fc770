"""The whole pipeline on a cluster whose nodes share nothing but object storage (issue #24).

A 0-CPU head (where the commands run) and two 1-CPU worker nodes, each with a private tmpfs
over /tmp and ~/.cache (tests/shared_nothing.py), and every input and artifact on ``s3://``
(moto on 127.0.0.1). Checked: records read = embedded = indexed; the index's add tasks ran on
both worker nodes and left nothing staged; predictions on the cluster equal a one-process run
on local paths; a 2-group bundle is served by searchers on both nodes and answers as
``genoray predict`` does; two reindex nights publish (the second one incremental); shift runs
across two S3 stores; a worker node killed during the index build or the embedding loses and
duplicates nothing and gives the same outputs.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from genoray.infra.ports import free_port
from tests.shared_nothing import SharedNothingCluster, why_not

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

DATA = Path(__file__).resolve().parents[1] / "genoray" / "data" / "ecoli_promoter_ipromoter2l.parquet"
BUCKET = "gr-cluster"
B = f"s3://{BUCKET}"
KEY = "cluster-key"


@pytest.fixture(scope="module")
def cluster():
    why = why_not()
    if why:
        pytest.skip(why)
    c = SharedNothingCluster(workers=2)
    try:
        c.start()
        s3 = c.s3()
        s3.create_bucket(Bucket=BUCKET)
        t = pq.read_table(DATA)

        def put(key: str, table: pa.Table) -> None:
            b = io.BytesIO()
            pq.write_table(table, b)
            s3.put_object(Bucket=BUCKET, Key=key, Body=b.getvalue())

        put("in/data.parquet", t)
        put("in/test.parquet", t.filter(pc.equal(t["split"], "test")))
        night2 = t.filter(pc.equal(t["split"], "train")).slice(0, 200)
        night2 = night2.set_column(0, "id", pc.binary_join_element_wise(night2["id"], "-night2", ""))
        put("in/night2.parquet", night2)
        yield c
    finally:
        c.stop()


def _obj(c: SharedNothingCluster, key: str) -> bytes:
    return c.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _predictions(text: str) -> dict[str, tuple[str, list[float]]]:
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {r["seq_id"]: (r["label"], [round(p, 6) for p in r["probabilities"].values()]) for r in rows}


def test_pipeline_s3_to_s3(cluster, tmp_path):
    c = cluster
    rows = pq.read_table(DATA).num_rows
    train_rows = int(pc.sum(pc.equal(pq.read_table(DATA)["split"], "train")).as_py())

    # embed: every record read is written, none rejected
    emb = json.loads(c.genoray("embed", f"{B}/in/data.parquet", "--out", f"{B}/store").stdout)
    assert (emb["read"], emb["written"], emb["rejected"]) == (rows, rows, 0), emb

    # index on Ray: add tasks on both worker nodes, nothing left staged, every train row indexed
    c.genoray("index", f"{B}/store", "--out", f"{B}/index", "--ray", "--shards", "2", "--type", "IVF16,Flat")
    m = json.loads(_obj(c, "index/manifest.json"))
    assert m["ntotal"] == train_rows
    assert len(set(m["build"]["add_nodes"])) == 2, m["build"]
    assert not [k for k in c.keys(BUCKET, "index/") if "/parts/" in k or k.endswith(".genoray-shared")]

    c.genoray("train", f"{B}/store", "--index", f"{B}/index", "--out", f"{B}/head")
    ev = json.loads(c.genoray("evaluate", f"{B}/store", "--index", f"{B}/index", "--head", f"{B}/head",
                              "--json").stdout)
    c.genoray("publish", f"{B}/bundles", "--index", f"{B}/index", "--head", f"{B}/head", "--shard-groups", "2")
    pred = tmp_path / "cluster.jsonl"
    c.genoray("predict", f"{B}/in/test.parquet", "--index", f"{B}/index", "--head", f"{B}/head", "--out", str(pred))
    on_cluster = _predictions(pred.read_text())
    assert len(on_cluster) == rows - train_rows

    # the same commands in one process on local paths, no cluster: the same predictions
    local = tmp_path / "local"
    env = {k: v for k, v in c.env.items() if k != "RAY_ADDRESS"}
    env["OMP_NUM_THREADS"] = "1"  # as in Ray tasks: k-means gives the same quantizer
    for args in (["embed", str(DATA), "--out", str(local / "store")],
                 ["index", str(local / "store"), "--out", str(local / "index"), "--shards", "2", "--type", "IVF16,Flat"],
                 ["train", str(local / "store"), "--index", str(local / "index"), "--out", str(local / "head")],
                 ["predict", str(DATA), "--index", str(local / "index"), "--head", str(local / "head"),
                  "--out", str(local / "pred.jsonl")]):
        r = subprocess.run([str(Path(os.sys.executable).parent / "genoray"), *args], env=env, capture_output=True,
                           text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr[-2000:]
    one_process = _predictions((local / "pred.jsonl").read_text())
    assert on_cluster == {k: v for k, v in one_process.items() if k in on_cluster}
    assert ev["methods"]["fused"]["accuracy"] > 0.7, ev["methods"]["fused"]

    _serve_groups(c, on_cluster, tmp_path)

    # two nights of reindex on S3: both publish, the second adds a delta to the first's index
    nights = []
    for night in ("data", "night2"):
        r = c.genoray("reindex", f"{B}/in/{night}.parquet", "--work", f"{B}/work", "--bundles", f"{B}/rbundles",
                      "--encoder-from", f"{B}/store", "--type", "IVF16,Flat", "--shards", "2", *(["--append"] if nights else []))
        nights.append(json.loads(r.stdout))
    assert [n["published"] for n in nights] == [True, True], nights
    assert nights[1]["gate"]["index_build"]["mode"] == "incremental", nights[1]["gate"]["index_build"]
    # night 1's full build added on both worker nodes; night 2's delta (one new unit) in a Ray task
    builds = [n["gate"]["index_build"] for n in nights]
    assert len(builds[0]["add_nodes"]) == 2 and len(builds[1]["add_nodes"]) == 1, builds
    assert "local" not in builds[1]["add_nodes"], builds
    assert not [k for k in c.keys(BUCKET, "work/builds/") if "/staging/" in k or "/parts/" in k]
    assert nights[1]["gate"]["ntotal"] == train_rows + 200

    # shift between two S3 stores made with the same encoder (exit 0: no shift, 5: shift)
    r = c.genoray("shift", f"{B}/store", f"{B}/work/store", check=False)
    assert r.returncode in (0, 5), r.stderr[-2000:]
    assert r.stdout.strip(), r.stderr[-2000:]


def _serve_groups(c: SharedNothingCluster, expected: dict, tmp_path: Path) -> None:
    """``genoray serve`` of the 2-group bundle: searchers of the two groups on both worker nodes,
    answers equal to ``genoray predict``'s; SIGTERM stops it."""
    port = free_port()
    env = c.driver_env(GENORAY_API_KEYS=KEY)
    p = subprocess.Popen([str(Path(os.sys.executable).parent / "genoray"), "serve", f"{B}/bundles", "--port", str(port),
                          "--stats-port", str(free_port()), "--metrics-port", str(free_port())],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.err", "w"),
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 240:
            assert p.poll() is None, (tmp_path / "serve.err").read_text()[-3000:]
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{url}/v1/ready"), timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(2)
        else:
            raise AssertionError("serve not ready: " + (tmp_path / "serve.err").read_text()[-3000:])
        ids = sorted(expected)[:8]
        test = pq.read_table(DATA).to_pylist()
        seqs = {r["id"]: r["sequence"] for r in test if r["id"] in ids}
        req = urllib.request.Request(f"{url}/v1/predict", json.dumps({"sequences": [seqs[i] for i in ids]}).encode(),
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        got = [(a["label"], [round(v, 6) for v in a["probabilities"].values()]) for a in answer["predictions"]]
        assert got == [expected[i] for i in ids]
        # where the searcher replicas of each group run
        code = ("import json, ray; from ray import serve; ray.init(namespace='serve', log_to_driver=False, "
                "logging_level='ERROR'); nodes = {}\n"
                "for g in range(2):\n"
                "    h = serve.get_deployment_handle(f'searcher-{g}', app_name='genoray')\n"
                "    nodes[g] = sorted({h.info.remote().result()['node'] for _ in range(6)})\n"
                "print(json.dumps(nodes))")
        r = c.python(code, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        placed = json.loads(r.stdout.strip().splitlines()[-1])
        assert len({n for nodes in placed.values() for n in nodes}) == 2, placed
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _wait_for_key(c: SharedNothingCluster, prefix: str, suffix: str, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Wait until an object ``prefix...suffix`` exists (True) or ``proc`` ends first (False)."""
    s3, t0 = c.s3(), time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        if any(o["Key"].endswith(suffix) for o in page.get("Contents", [])):
            return True
        time.sleep(0.05)
    return False


def _until_done(c: SharedNothingCluster, args: list[str], prefix: str, suffix: str, victim: int) -> tuple[int, bool]:
    """Run ``genoray ARGS``, SIGKILL worker node ``victim`` once its first ``suffix`` object
    appears, let the job finish or fail, rerun it once if it failed (the resume); then bring
    the node back. Returns (the first run's exit code, whether the node died mid-job)."""
    p = c.popen(*args)
    killed = _wait_for_key(c, prefix, suffix, p)
    if killed:
        c.kill_worker(victim)
    _out, err = p.communicate(timeout=600)
    if p.returncode != 0:  # the job failed with the node: a rerun resumes it
        c.genoray(*args)
    c.start_worker(victim)
    c.wait_nodes(3)
    return p.returncode, killed


def test_killed_node_during_index_build_and_embedding(cluster):
    c = cluster
    if not c.keys(BUCKET, "store/store.json"):  # run alone: make the store the pipeline test makes
        c.genoray("embed", f"{B}/in/data.parquet", "--out", f"{B}/store")
    # the index: a clean build, then the same build with a worker node killed once a partition is done
    args = ["--ray", "--shards", "4", "--type", "IVF16,Flat"]
    c.genoray("index", f"{B}/store", "--out", f"{B}/index-clean", *args)
    rc, killed = _until_done(c, ["index", f"{B}/store", "--out", f"{B}/index-chaos", *args], "index-chaos/parts/",
                             ".done.json", victim=2)
    print(f"index: first run exit {rc}, node killed mid-build: {killed}")
    clean, chaos = (json.loads(_obj(c, f"{d}/manifest.json")) for d in ("index-clean", "index-chaos"))
    assert killed, "the build finished before a node could be killed"
    assert chaos["ntotal"] == clean["ntotal"]
    assert [s["sha256"] for s in chaos["shards"]] == [s["sha256"] for s in clean["shards"]], (rc, chaos["build"])
    assert chaos["trained"]["sha256"] == clean["trained"]["sha256"]

    # the embedding: 3 copies of the data (new ids) in units of 1,000 rows; a node dies after the first unit
    t = pq.read_table(DATA)
    big = pa.concat_tables([t.set_column(0, "id", pc.binary_join_element_wise(t["id"], f"-r{i}", ""))
                            for i in range(3)])
    b = io.BytesIO()
    pq.write_table(big, b, row_group_size=1000)
    c.s3().put_object(Bucket=BUCKET, Key="in/big.parquet", Body=b.getvalue())
    rc, killed = _until_done(c, ["embed", f"{B}/in/big.parquet", "--out", f"{B}/store-chaos", "--rows-per-unit", "1000",
                                 "--encoder-from", f"{B}/store"], "store-chaos/shards/", ".done.json", victim=1)
    print(f"embed: first run exit {rc}, node killed mid-job: {killed}")
    assert killed, "the embedding finished before a node could be killed"
    read = c.python("import sys, json; from genoray.embedding import EmbeddingStore; "
                    f"s = EmbeddingStore('{B}/store-chaos').load(None); ids = [str(i) for i in s.ids]; "
                    f"r = EmbeddingStore('{B}/store').load(None); ref = dict(zip([str(i) for i in r.ids], r.vectors)); "
                    "import numpy as np; same = all(np.array_equal(v, ref[i.rsplit('-r', 1)[0]]) for i, v in "
                    "zip(ids, s.vectors)); print(json.dumps({'n': len(ids), 'unique': len(set(ids)), 'same': same}))")
    assert read.returncode == 0, read.stderr[-2000:]
    got = json.loads(read.stdout.strip().splitlines()[-1])
    assert got == {"n": big.num_rows, "unique": big.num_rows, "same": True}, (rc, got)
