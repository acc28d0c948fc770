"""Index build and search on N x 256 embeddings: the auto-chosen index vs exact search, the
single-process build vs the build on Ray, and the capacity plan's predictions vs measurements.

Embeddings are the 4-mer spectra (256 dims) of N sequences sampled and mutated from the shared
data, written as a real store. Each build runs in its own subprocess so its peak memory is its
own:

* ``single``: ``build_index(use_ray=False)`` (train once, add per partition, merge, tune);
* ``ray``: ``build_index(use_ray=True)`` on a local 2-CPU Ray (driver peak RSS, and the largest
  peak RSS of any task's worker process);
* ``baseline`` (``--baseline-rev REV``): the build as it was at git revision REV, for "today's"
  single-process build.

Beside each: ``genoray.index.capacity.estimate`` for the same store (peak RSS, time), with the per-core
FLOP rate measured in the same run (a 2-second faiss kNN), and the ratios. Then 1,000 held-out
queries are searched in batch and one at a time with the built index and with exact search.

    python bench/bench_index.py [--n 1000000] [--budget-mb 4096] [--type auto] [--work DIR]
                                [--builds single,ray] [--baseline-rev 29eba8c] [--no-search]

``--work DIR`` keeps (and reuses) the generated store there, to compare index types.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _common import corpus, median_time

BUILD = """
import json, os, resource, sys, time
from genoray.config import IndexConfig
mode = sys.argv[5]
if mode == "ray":
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 2**20)
from genoray.index import build_index
t0 = time.perf_counter()
kw = {} if mode == "baseline" else {"use_ray": mode == "ray"}
rep = build_index(sys.argv[1], sys.argv[2], IndexConfig(split="train", memory_budget_mb=int(sys.argv[3]),
                                                        index_type=sys.argv[4]), **kw)
print(json.dumps({"factory": rep.factory, "recall": rep.recall_at_10, "params": rep.search_params,
                  "seconds": time.perf_counter() - t0, "train_sample": getattr(rep, "train_sample", None),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_worker_rss_mb": getattr(rep, "peak_worker_rss_mb", 0.0),
                  "add_nodes": len(getattr(rep, "add_nodes", []))}))
"""


def measure_gflops_per_core() -> float:
    """faiss kNN (sgemm) rate on this machine now, per core, in GFLOP/s (median of 3)."""
    import os as _os

    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((4096, 256), dtype=np.float32), rng.standard_normal((20000, 256), dtype=np.float32)
    t = median_time(lambda: faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT))
    return 20000 * 4096 * 256 * 2 / t / 1e9 / (_os.cpu_count() or 1)


def run_build(mode: str, work: Path, args, baseline_dir: Path | None = None) -> dict:
    out = work / f"index-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    if baseline_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(baseline_dir), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", BUILD, str(work / "store"), str(out), str(args.budget_mb), args.type,
                          mode], capture_output=True, text=True, check=True, env=env,
                         cwd=baseline_dir)  # python -c puts the cwd first on sys.path
    return json.loads(res.stdout.strip().splitlines()[-1])


def baseline_tree(rev: str) -> Path:
    """The genoray package as it was at ``rev`` (git), in a temp dir."""
    root = Path(__file__).resolve().parents[1]
    d = Path(tempfile.mkdtemp(prefix="genoray-baseline-"))
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "genoray"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        (d / f).write_bytes(subprocess.run(["git", "show", f"{rev}:{f}"], cwd=root, capture_output=True,
                                           check=True).stdout)
    return d


def qps(fn, queries, single: bool, repeats: int = 3) -> float:
    """Median queries/s over ``repeats`` runs."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if single:
            for q in queries:
                fn(q[None, :])
        else:
            fn(queries)
        rates.append(len(queries) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    import faiss

    from genoray.config import ClusterSpec, IndexConfig, KmerConfig
    from genoray.embedding.job import embed_sequences
    from genoray.embedding.store import EmbeddingStore, has_manifest
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import VectorIndex, l2_normalize, recall_at_k
    from genoray.index.capacity import plan_store

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--budget-mb", type=int, default=4096)
    ap.add_argument("--type", default="auto", help="faiss factory string, or auto")
    ap.add_argument("--work", help="keep the generated store in this directory and reuse it")
    ap.add_argument("--builds", default="single,ray", help="comma-separated: single, ray")
    ap.add_argument("--baseline-rev", default="", help="also build with genoray as of this git revision")
    ap.add_argument("--no-search", action="store_true", help="skip the search comparison")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        if not has_manifest(work / "store"):
            work.mkdir(parents=True, exist_ok=True)
            seqs = corpus(args.n + 1000, seed=3)
            split = ["train"] * args.n + ["test"] * 1000
            pq.write_table(pa.table({"id": [f"s{i}" for i in range(len(seqs))], "sequence": seqs, "split": split}),
                           work / "in.parquet", row_group_size=100_000)
            del seqs
            enc = KmerEncoder(KmerConfig(ks=(4,), gc=False, zcurve=False))
            embed_sequences(work / "in.parquet", work / "store", enc, use_ray=False)
        gflops = measure_gflops_per_core()
        cfg = IndexConfig(split="train", memory_budget_mb=args.budget_mb, index_type=args.type)
        plan = plan_store(work / "store", cfg, ClusterSpec(gflops_per_core=gflops))
        ix = plan.stages["index"]
        builds = {}
        if args.baseline_rev:
            builds["baseline"] = run_build("baseline", work, args, baseline_tree(args.baseline_rev))
        for mode in [m for m in args.builds.split(",") if m]:
            builds[mode] = run_build(mode, work, args)
        print(f"{plan.n} x {plan.dim} (the store in {work}); faiss kNN rate now "
              f"{gflops:.1f} GFLOP/s per core; plan: {ix['factory']}, train sample {ix['train_sample']:,}")
        print(f"{'build':<10} {'factory':<14} {'recall':>6} {'time s':>7} {'plan s':>7} {'ratio':>6} "
              f"{'peak MiB':>9} {'plan MiB':>9} {'err':>6} {'worker MiB':>10} {'plan':>6} {'err':>6}")
        for mode, b in builds.items():
            pred_s = ix["single_process_s"] if mode != "ray" else ix["build_hours"] * 3600
            pred_mb = (ix["peak_single_process_bytes"] if mode != "ray" else ix["peak_driver_bytes"]) / 2**20
            pw = ix["peak_worker_bytes"] / 2**20 if mode == "ray" else float("nan")
            wk = b.get("peak_worker_rss_mb") or float("nan")
            print(f"{mode:<10} {b['factory']:<14} {b['recall']:>6.3f} {b['seconds']:>7.1f} {pred_s:>7.1f} "
                  f"{b['seconds'] / pred_s:>6.2f} {b['peak_rss_mb']:>9.0f} {pred_mb:>9.0f} "
                  f"{(pred_mb - b['peak_rss_mb']) / b['peak_rss_mb']:>+6.0%} {wk:>10.0f} {pw:>6.0f} "
                  f"{(pw - wk) / wk:>+6.0%}")
        if "baseline" in builds:
            bl = builds["baseline"]
            for mode in [m for m in builds if m != "baseline"]:
                peak = builds[mode]["peak_worker_rss_mb" if mode == "ray" else "peak_rss_mb"]
                print(f"{mode} vs baseline ({args.baseline_rev}, one process, same run): time "
                      f"x{builds[mode]['seconds'] / bl['seconds']:.2f}, peak RSS "
                      f"{'of the largest worker ' if mode == 'ray' else ''}x{peak / bl['peak_rss_mb']:.2f}")
        print("(time ratio = measured / predicted; err = (predicted - measured) / measured; "
              "ray: driver peak RSS in 'peak MiB', largest task worker's peak in 'worker MiB')")
        print(json.dumps({"n": args.n, "gflops_per_core": gflops, "builds": builds,
                          "plan": {k: ix[k] for k in ("factory", "train_sample", "peak_single_process_bytes",
                                                      "peak_worker_bytes", "single_process_s", "build_hours")}}))
        if args.no_search:
            return
        store = EmbeddingStore(work / "store")
        base = l2_normalize(store.load("train").vectors)
        queries = l2_normalize(store.load("test").vectors)
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(base)
        idx = VectorIndex.load(work / f"index-{next(iter(builds))}")
        _, truth = flat.search(queries, 10)
        _, found = idx.search(queries, 10)
        recall = recall_at_k(found, truth)
        rows = []
        for mode, single in (("batch of 1000", False), ("one query at a time", True)):
            q_exact = qps(lambda q: flat.search(q, 10), queries if not single else queries[:200], single)
            q_idx = qps(lambda q: idx.search(q, 10), queries, single)
            rows.append((mode, q_exact, q_idx))
        print(f"recall@10 on 1000 held-out queries: {recall:.3f}")
        print(f"{'search mode (median of 3)':<26} {'exact q/s':>10} {'index q/s':>10} {'speed-up':>9}")
        for mode, a, b in rows:
            print(f"{mode:<26} {a:>10.0f} {b:>10.0f} {b / a:>9.1f}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
