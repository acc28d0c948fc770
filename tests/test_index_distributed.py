"""The index build on a Ray cluster of two worker nodes (head with 0 CPUs): adds on both nodes,
files identical to a single-process build with the same trained quantizer, a bounded driver,
a worker killed mid-build retried, a killed driver resumed."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, os, shutil, signal, subprocess, sys, tempfile, threading, time, pathlib
    import ray
    from ray.cluster_utils import Cluster
    from genoray.config import IndexConfig
    from genoray.index import VectorIndex, build_index
    from genoray.embedding.synthetic import write_synthetic_store
    from genoray.infra.runtime import ray_temp_dir

    def rss_mb(key="VmRSS"):
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024

    work = pathlib.Path(sys.argv[1]); n, d = int(sys.argv[2]), int(sys.argv[3])
    store = write_synthetic_store(work / "store", n, d, parts=8, test_fraction=0.01)
    cfg = IndexConfig(split="train", index_type=sys.argv[4], shards=2, recall_queries=200, target_recall=0.9)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                      "object_store_memory": 150 * 2**20, "temp_dir": (ray_temp := ray_temp_dir("rc-"))})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False)
    workers = sorted(nd.node_id for nd in cluster.worker_nodes)
    import genoray.index.build  # imports done before measuring the driver
    base = rss_mb()
    rep = build_index(store, work / "ray", cfg, use_ray=True)
    growth = rss_mb("VmHWM") - base

    # single process, same trained quantizer (a rerun reuses a matching trained.faiss)
    (work / "local").mkdir()
    for f in ("trained.faiss", "trained.json"):
        shutil.copy(work / "ray" / f, work / "local" / f)
    # with the Ray tasks' thread count (Ray sets OMP_NUM_THREADS=1 for them): at 1M x 64 a 2-thread
    # build differed in one of two shards (every search result equal; most likely thread-split float
    # rounding of near-tied coarse assignments); a 1-thread build matched byte for byte
    import faiss
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    local = build_index(store, work / "local", cfg, use_ray=False)
    faiss.omp_set_num_threads(threads)

    # a worker process killed while it adds: Ray retries the task
    killed = []
    def killer(out):
        while not killed:
            for f in pathlib.Path(out, "parts").glob("*.started") if pathlib.Path(out, "parts").exists() else []:
                if pathlib.Path(out, "parts", f.name.split(".")[0] + ".done.json").exists():
                    continue  # that task finished; kill one that is still adding
                try:
                    pid = int(f.read_text())
                    os.kill(pid, signal.SIGKILL); killed.append((f.name, pid)); break
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    pass
            time.sleep(0.005)
    th = threading.Thread(target=killer, args=(work / "chaos",), daemon=True); th.start()
    chaos = build_index(store, work / "chaos", cfg, use_ray=True)

    # a killed driver: a rerun into the same directory resumes the finished partitions
    drv = subprocess.Popen([sys.executable, "-c", "import sys, ray; from genoray.index import build_index; "
        "from genoray.config import IndexConfig; ray.init(address=sys.argv[1], log_to_driver=False); "
        f"build_index(sys.argv[2], sys.argv[3], IndexConfig(split='train', index_type={sys.argv[4]!r}, shards=2, "
        "recall_queries=200, target_recall=0.9), use_ray=True)", cluster.address, str(store), str(work / "resumed")])
    parts = work / "resumed" / "parts"
    while drv.poll() is None and len(list(parts.glob("*.done.json")) if parts.exists() else []) < 3:
        time.sleep(0.01)
    drv.kill(); drv.wait()
    done_before = len(list(parts.glob("*.done.json")))
    resumed = build_index(store, work / "resumed", cfg, use_ray=True)

    def files(p):
        m = json.loads((p / "manifest.json").read_text())
        return [s["sha256"] for s in m["shards"]], m["trained"]["sha256"], m["search_params"]
    a, b = VectorIndex.load(work / "ray"), VectorIndex.load(work / "local")
    import numpy as np
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((50, d)).astype("float32")
    same_search = all(np.array_equal(x, y) for x, y in zip(a.search(queries, 10), b.search(queries, 10)))
    print(json.dumps({
        "workers": workers, "add_nodes": rep.add_nodes, "factory": rep.factory, "recall": rep.recall_at_10,
        "driver_growth_mb": growth, "same_files": files(work / "ray") == files(work / "local"),
        "differs": [k for k, x, y in zip(("shards", "trained", "search_params"), files(work / "ray"),
                                          files(work / "local")) if x != y],
        "shard_files_differ": sorted(f for x, y in zip(files(work / "ray")[0], files(work / "local")[0])
                                     for f in x if x[f] != y.get(f)),
        "same_search": same_search, "killed": killed, "chaos_same": files(work / "chaos") == files(work / "ray"),
        "done_before": done_before, "resumed": resumed.resumed_partitions, "partitions": resumed.partitions,
        "resumed_same": files(work / "resumed") == files(work / "ray"), "ntotal": rep.ntotal,
        "peak_worker_rss_mb": rep.peak_worker_rss_mb}))
    ray.shutdown(); cluster.shutdown()
    shutil.rmtree(ray_temp, ignore_errors=True)
""")


def run_cluster_build(tmp_path, n, d, factory, timeout):
    env = dict(os.environ, RAY_AUTH_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(n), str(d), factory],
                         capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(res)
    return res


def check(res):
    assert set(res["add_nodes"]) == set(res["workers"]) and len(res["workers"]) == 2  # adds ran on both nodes
    assert res["same_files"] and res["same_search"]  # == single-process build with the same quantizer
    assert res["driver_growth_mb"] < 100
    assert len(res["killed"]) == 1 and res["chaos_same"]  # killed worker retried, same index
    assert 3 <= res["done_before"] and res["resumed"] >= res["done_before"] - 1 and res["resumed_same"]


@pytest.mark.ray
@pytest.mark.chaos
@pytest.mark.timeout(660)
def test_cluster_build_matches_single_process_and_survives_kills(tmp_path):
    check(run_cluster_build(tmp_path, 50_000, 32, "IVF128,SQ8", timeout=600))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get("GENORAY_BIG_TESTS") != "1",
                    reason="the 1M x 64 acceptance size takes minutes on 2 cores: set GENORAY_BIG_TESTS=1 "
                           "(the 50k x 32 test above checks the same in CI)")
def test_cluster_build_1m_x_64(tmp_path):
    """The acceptance size: 1M x 64 (minutes on 2 cores; opt-in with GENORAY_BIG_TESTS=1)."""
    check(run_cluster_build(tmp_path, 1_000_000, 64, "auto", timeout=1750))
