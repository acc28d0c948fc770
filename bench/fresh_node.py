"""A fresh serving node's time to its first answer, on the shared-nothing harness
(``python bench/bench_cluster.py --fresh-node``; see that module's docstring for the set-up).

The replica on the fresh node is a Ray actor pinned there by the node's own custom resource
(``node<i>``, :mod:`tests.shared_nothing`), which runs the steps a Serve replica of the HAProxy
topology (``GenorayReplica``) runs, one at a time so each is timed: the node-local copy of the
version (:func:`genoray.bundle.version_dir`: each object downloaded and hashed once), the
verification :meth:`genoray.predict.Predictor.from_bundle` does first
(:func:`genoray.bundle.verify_bundle` with the node's verified record), the replica's
:class:`genoray.serving.holder.BundleHolder` (lease, verified-record hit, load with ``mmap``), and
the genoray HTTP app on that holder (``create_app`` + ``LocalBackend``: the replica's predict
path without Serve's ``@serve.batch``, which runs only inside a Serve replica) under uvicorn,
which answers the first ``POST /v1/predict``. What is *not* timed: Serve's controller choosing
the node (the actor is placed by a resource), Serve's replica wrapper and the hop through HAProxy.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from genoray.infra.ports import free_port
from tests.shared_nothing import SharedNothingCluster

BUCKET = "bench-fresh"
ROOT = f"s3://{BUCKET}/bundles"


class FreshReplica:
    """The replica on the fresh node (a Ray actor); every step returns its wall-clock times."""

    def __init__(self, root: str):
        self.t_constructed = time.time()
        t0 = time.perf_counter()
        import genoray.predict  # noqa: F401  (what a replica process imports first)
        import genoray.serving.app  # noqa: F401

        self.import_s = time.perf_counter() - t0
        self.root, self.holder, self.server = root, None, None

    def started(self) -> dict[str, Any]:
        """When the constructor ran, its imports, and where (node id, cache root)."""
        import ray

        from genoray.infra import fs

        return {"t_constructed": self.t_constructed, "import_s": self.import_s,
                "node": ray.get_runtime_context().get_node_id(), "cache": str(fs.cache_root())}

    def fetch(self, version: str) -> dict[str, Any]:
        """The node-local copy of ``version`` (downloaded objects only), then its verification."""
        from genoray.bundle import verify_bundle, version_dir
        from genoray.infra import fs

        d0, t0 = fs.TRANSFERRED["downloaded"], time.perf_counter()
        vdir = version_dir(self.root, version)
        t1 = time.perf_counter()
        verify_bundle(self.root, version, cached=True)
        t2 = time.perf_counter()
        cache = fs.cache_dir("bundles", self.root) / "objects"
        return {"download_s": t1 - t0, "verify_s": t2 - t1, "downloaded": fs.TRANSFERRED["downloaded"] - d0,
                "version_bytes": sum(p.stat().st_size for p in vdir.rglob("*") if p.is_file()),
                "cache_bytes": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())}

    def serve(self, port: int) -> dict[str, Any]:
        """Construct the replica's holder (loads ``CURRENT``) and start its HTTP app on ``port``."""
        import uvicorn

        from genoray.config import ServeConfig
        from genoray.serving.backends import LocalBackend
        from genoray.serving.holder import BundleHolder
        from genoray.serving.service import create_app

        t0 = time.perf_counter()
        self.holder = BundleHolder(self.root, poll_s=3600, mmap=True)
        t1 = time.perf_counter()
        cfg = ServeConfig(root=self.root)
        app = create_app(LocalBackend(self.holder), require_key=False, limits=cfg.limits)
        self.server = server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.005)
        return {"load_s": t1 - t0, "http_up_s": time.perf_counter() - t1, "version": self.holder.version}

    def move(self, version: str) -> dict[str, Any]:
        """The holder's swap to ``version`` (already fetched and verified by :meth:`fetch`)."""
        assert self.holder is not None
        t0 = time.perf_counter()
        self.holder.load(version)
        return {"load_s": time.perf_counter() - t0, "version": self.holder.version}

    def stop(self) -> None:
        """Stop the HTTP server and release the lease (the node is killed next)."""
        if self.server is not None:
            self.server.should_exit = True
        if self.holder is not None:
            self.holder.close()


def predict(port: int, seqs: list[str]) -> tuple[float, str]:
    """One ``POST /v1/predict`` over HTTP: (seconds, the version that answered)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", json.dumps({"sequences": seqs}).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        body = json.loads(r.read())
    assert len(body["predictions"]) == len(seqs), body
    return time.perf_counter() - t0, body["bundle_version"]


def make_store(work: Path, n: int) -> Path:
    """A synthetic n x 64 store recorded as made by a 3-mer profile (queries are DNA)."""
    from genoray.config import KmerConfig
    from genoray.embedding.synthetic import write_synthetic_store
    from genoray.encoders import fingerprint
    from genoray.encoders.kmer import KmerEncoder
    from genoray.infra.artifacts import read_json, write_json

    store = work / "store"
    write_synthetic_store(store, n, 64, parts=max(2, n // 125_000), test_fraction=0.01)
    enc = KmerEncoder(KmerConfig(ks=(3,), gc=False, zcurve=False))
    spec = json.loads(json.dumps(enc.spec()))
    doc = read_json(store / "store.json")
    doc.update(encoder=spec, fingerprint=fingerprint(enc))
    write_json(store / "store.json", doc)
    write_json(store / "encoder.json", spec)
    return store


def publish_versions(work: Path, n: int, root: str = ROOT, index_type: str = "auto") -> dict[str, Any]:
    """Version 1: build, head, publish to ``root`` (from the driver's node, the head)."""
    from genoray.bundle import publish
    from genoray.config import HeadConfig, IndexConfig
    from genoray.index import build_index
    from genoray.infra import fs
    from genoray.pipeline import write_bundle
    from genoray.pipeline.train import train_head

    store = make_store(work, n)
    t0 = time.perf_counter()
    rep = build_index(store, work / "index1", IndexConfig(index_type=index_type, split="train", recall_queries=200))
    train_head(store, work / "index1", work / "head", HeadConfig(max_rows=20_000))
    u0 = fs.TRANSFERRED["uploaded"]
    v1 = write_bundle(root, work / "index1", work / "head")
    publish(root, v1)
    return {"v1": v1, "v1_s": time.perf_counter() - t0, "v1_uploaded": fs.TRANSFERRED["uploaded"] - u0,
            "factory": rep.factory}


def publish_night(work: Path, n: int, night: int, root: str = ROOT, index_type: str = "auto") -> dict[str, Any]:
    """Night ``night`` (1, 2, ...): 1% new rows appended, ``extend_index`` of the previous
    night's index, the head carried over, published."""
    from genoray.bundle import publish
    from genoray.config import IndexConfig
    from genoray.embedding.synthetic import append_synthetic_rows
    from genoray.index import build_index
    from genoray.index.delta import RetrainNeeded, extend_index
    from genoray.infra import fs
    from genoray.pipeline import write_bundle

    append_synthetic_rows(work / "store", n // 100, seed=0)
    t0 = time.perf_counter()
    cfg = IndexConfig(index_type=index_type, split="train", recall_queries=200)
    try:
        rep = extend_index(work / f"index{night}", work / "store", work / f"index{night + 1}", 0.0, cfg)
        mode = "extended"
    except RetrainNeeded as e:  # a Flat index (small n): the night rebuilds, as reindex does
        print(f"night: {e}", flush=True)
        rep, mode = build_index(work / "store", work / f"index{night + 1}", cfg), "rebuilt"
    u0 = fs.TRANSFERRED["uploaded"]
    v2 = write_bundle(root, work / f"index{night + 1}", work / "head")
    publish(root, v2)
    return {"v2": v2, "v2_s": time.perf_counter() - t0, "v2_uploaded": fs.TRANSFERRED["uploaded"] - u0,
            "v2_ntotal": rep.ntotal, "mode": mode, "factory": rep.factory}


def version_size(version: str, root: str = ROOT) -> int:
    """Bytes of every object ``version``'s ``bundle.json`` lists (the whole version)."""
    from genoray.bundle import read_version
    from genoray.infra import fs

    files = read_version(root, version).files
    return sum(fs.info(fs.join(root, "objects", d[:2], d))[1] for d in set(files.values()))


def join(c: SharedNothingCluster, i: int, timeout: float = 180) -> dict[str, Any]:
    """Start worker node ``i`` (fresh: its own empty /tmp and ~/.cache) and wait until Ray lists it alive."""
    import ray

    t0 = time.time()
    c.start_worker(i)
    while time.time() - t0 < timeout:
        if any(nd["Alive"] and f"node{i}" in nd["Resources"] for nd in ray.nodes()):
            return {"t_start": t0, "join_s": time.time() - t0}
        time.sleep(0.05)
    raise RuntimeError(f"worker node {i} not alive after {timeout} s; logs: {c.tails()}")


def cold_node(c: SharedNothingCluster, i: int, version: str, seqs: list[str]) -> tuple[dict[str, Any], Any, int]:
    """Node ``i`` from ``ray start`` to its first answer; returns the timeline, the actor and its port."""
    import ray

    row: dict[str, Any] = {"node": i}
    j = join(c, i)
    row["join_s"] = j["join_s"]
    t_joined = time.time()
    actor = ray.remote(FreshReplica).options(num_cpus=1, resources={f"node{i}": 1}).remote(ROOT)
    s = ray.get(actor.started.remote(), timeout=300)
    row["scheduled_s"] = s["t_constructed"] - t_joined  # worker process up on the node
    row["import_s"] = s["import_s"]
    f = ray.get(actor.fetch.remote(version), timeout=900)
    row.update(download_s=f["download_s"], verify_s=f["verify_s"], downloaded=f["downloaded"],
               version_bytes=f["version_bytes"])
    port = free_port()
    sv = ray.get(actor.serve.remote(port), timeout=600)
    assert sv["version"] == version, (sv, version)
    row.update(load_s=sv["load_s"], http_up_s=sv["http_up_s"])
    row["first_answer_s"], answered = predict(port, seqs)
    assert answered == version, (answered, version)
    row["total_s"] = time.time() - j["t_start"]
    return row, actor, port


def warm_move(actor: Any, port: int, version: str, seqs: list[str]) -> dict[str, Any]:
    """The warm node's move to ``version``: fetch (new objects only), verify, swap, first answer."""
    import ray

    t0 = time.time()
    f = ray.get(actor.fetch.remote(version), timeout=900)
    mv = ray.get(actor.move.remote(version), timeout=600)
    assert mv["version"] == version, (mv, version)
    first, answered = predict(port, seqs)
    assert answered == version, (answered, version)
    return {"download_s": f["download_s"], "verify_s": f["verify_s"], "downloaded": f["downloaded"],
            "version_bytes": f["version_bytes"], "load_s": mv["load_s"], "first_answer_s": first,
            "total_s": time.time() - t0}


def serve_replacement(c: SharedNothingCluster, first: int, seqs: list[str], repeats: int,
                      timeout: float = 600) -> list[dict[str, Any]]:
    """The Serve path, totals only: ``genoray serve ROOT --ingress proxy`` with its replicas on
    node ``first``; ``repeats`` times, the node holding them is killed and, once Ray lists it
    dead, a fresh node is started: the seconds from its ``ray start`` to its join and to the
    first ``200`` of ``POST /v1/predict`` through Serve's proxy on the head (Serve's controller
    re-places the ingress and the model replica there, the only node with CPUs; they download,
    verify and load the bundle)."""
    import signal
    import subprocess
    import sys
    import urllib.error

    import ray

    key, port, node = "bench-key", free_port(), first
    join(c, first)
    err = c.root / "serve.err"
    p = subprocess.Popen([str(Path(sys.executable).parent / "genoray"), "serve", ROOT, "--ingress", "proxy",
                          "--port", str(port), "--min-replicas", "1", "--max-replicas", "1", "--num-cpus", "0.5"],
                         env=c.driver_env(GENORAY_API_KEYS=key), stdout=subprocess.DEVNULL, stderr=open(err, "wb"),
                         stdin=subprocess.DEVNULL, start_new_session=True)

    def answer() -> bool:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", json.dumps({"sequences": seqs}).encode(),
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        t0 = time.time()
        while not answer():
            if p.poll() is not None or time.time() - t0 > timeout:
                raise RuntimeError(f"genoray serve not answering: {err.read_text()[-2000:]}")
            time.sleep(0.5)
        out = []
        print(f"serve: answering {time.time() - t0:.1f} s after it started", flush=True)
        for _ in range(repeats):
            c.kill_worker(node)
            t_kill = time.time()
            while any(nd["Alive"] and f"node{node}" in nd["Resources"] for nd in ray.nodes()):
                time.sleep(0.2)
            dead_s = time.time() - t_kill
            node += 1
            j = join(c, node)
            while not answer():
                if p.poll() is not None or time.time() - j["t_start"] > timeout:
                    raise RuntimeError(f"no answer after node {node} joined: {err.read_text()[-2000:]}")
                time.sleep(0.2)
            out.append({"node": node, "lost_node_dead_after_s": dead_s, "join_s": j["join_s"],
                        "first_answer_s": time.time() - j["t_start"]})
            print("serve, a fresh node replacing a lost one:", json.dumps({a: round(b, 2) for a, b in out[-1].items()}),
                  flush=True)
        return out
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if f"worker{node}" in c.procs:
            c.kill_worker(node)


WARM, COLD_LAST = "warm node, a +1% night", "cold node, last night"
STEPS = ("join_s", "scheduled_s", "import_s", "download_s", "verify_s", "load_s", "http_up_s", "first_answer_s", "total_s")


def table(rows: dict[str, list[dict[str, Any]]], sizes: dict[str, int]) -> None:
    """Medians per case, one column per step, and the bytes downloaded against the whole version."""
    mib = 2**20
    print(f"\n{'case':<28} {'n':>2} " + " ".join(f"{s[:-2]:>9}" for s in STEPS) + f" {'MiB down':>9} {'of MiB':>8}")
    for case, rs in rows.items():
        med = {s: statistics.median(r[s] for r in rs) for s in STEPS if all(s in r for r in rs)}
        cells = " ".join(f"{med[s]:>9.2f}" if s in med else f"{'-':>9}" for s in STEPS)
        down = statistics.median(r["downloaded"] for r in rs)
        print(f"{case:<28} {len(rs):>2} {cells} {down / mib:>9.2f} {sizes[case] / mib:>8.2f}")
    print(json.dumps(rows))


def fresh_node(n: int, repeats: int, with_serve: bool = True) -> None:
    """The ``--fresh-node`` run (printed: each node's timeline, then the medians)."""
    import ray

    os.environ.pop("GENORAY_CACHE", None)  # worker nodes: ~/.cache/genoray on their private tmpfs
    c = SharedNothingCluster(workers=0)
    c.env.pop("GENORAY_CACHE", None)
    work = Path(tempfile.mkdtemp(prefix="bench-fresh-"))
    try:
        c.start()
        os.environ.update({k: v for k, v in c.env.items() if k.startswith("AWS_")})
        c.s3().create_bucket(Bucket=BUCKET)
        t0 = time.perf_counter()
        print(f"load average at the start {os.getloadavg()}", flush=True)
        os.environ["GENORAY_CACHE"] = str(work / "publisher-cache")  # the publisher's node (the head)
        pub = publish_versions(work, n)
        v1 = pub["v1"]
        print(f"v1 {v1}: {n:,} x 64 ({pub['factory']}) built and published in {pub['v1_s']:.0f} s, "
              f"{pub['v1_uploaded'] / 2**20:.1f} MiB uploaded", flush=True)
        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR", namespace="bench-fresh")
        rng = np.random.default_rng(0)
        seqs = ["".join(rng.choice(list("ACGT"), 200)) for _ in range(8)]
        rows: dict[str, list[dict[str, Any]]] = {"cold node, v1": [], WARM: [], COLD_LAST: []}
        node, keep = 0, None
        for r in range(repeats):
            node += 1
            row, actor, port = cold_node(c, node, v1, seqs)
            print("cold v1:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
            rows["cold node, v1"].append(row)
            if r < repeats - 1:
                ray.get(actor.stop.remote())
                ray.kill(actor)
                c.kill_worker(node)
            else:
                keep = (actor, port)
        assert keep is not None
        v2 = v1
        for k in range(1, repeats + 1):  # one +1% night each, and the warm node's move to it
            night = publish_night(work, n, k)
            v2 = night["v2"]
            print(f"night {k}, {v2}: +{n // 100:,} rows, index {night['mode']} ({night['factory']}), published "
                  f"in {night['v2_s']:.0f} s, {night['v2_uploaded'] / 2**20:.2f} MiB uploaded", flush=True)
            mv = warm_move(keep[0], keep[1], v2, seqs)
            print("warm move:", json.dumps({a: round(b, 3) if isinstance(b, float) else b for a, b in mv.items()}),
                  flush=True)
            rows[WARM].append(mv)
        ray.get(keep[0].stop.remote())
        ray.kill(keep[0])
        c.kill_worker(node)
        for _ in range(repeats):
            node += 1
            row, actor, _port = cold_node(c, node, v2, seqs)
            print("cold, last night:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
            rows[COLD_LAST].append(row)
            ray.get(actor.stop.remote())
            ray.kill(actor)
            c.kill_worker(node)
        if with_serve:
            sv = serve_replacement(c, node + 1, seqs, repeats)
            print("serve, fresh node replacing a lost one (medians): " + ", ".join(
                f"{k} {statistics.median(r[k] for r in sv):.2f}" for k in ("lost_node_dead_after_s", "join_s",
                                                                            "first_answer_s")), flush=True)
        sizes = {"cold node, v1": version_size(v1), WARM: version_size(v2), COLD_LAST: version_size(v2)}
        print(f"\nbench wall {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")
        table(rows, sizes)
    finally:
        try:
            ray.shutdown()
        finally:
            c.stop()
            shutil.rmtree(work, ignore_errors=True)
