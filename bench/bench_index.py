"""Index build and search on N x 256 embeddings: the auto-chosen index vs exact search.

Embeddings are the 4-mer spectra (256 dims) of N sequences sampled and mutated from the shared
data, written as a real store. ``build_index`` (auto type, nprobe tuned to recall@10 >= 0.95)
runs in a subprocess so its peak memory is measured on its own and compared with the budget.
Then 1,000 held-out queries are searched in batch and one at a time with the built index and
with exact search (faiss IndexFlatIP over the same vectors) in the same run.

    python bench/bench_index.py [--n 1000000] [--budget-mb 4096] [--type auto] [--work DIR]

``--work DIR`` keeps (and reuses) the generated store there, to compare index types.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _common import corpus

BUILD = """
import json, resource, sys, time
from genoray.config import IndexConfig
from genoray.index import build_index
t0 = time.perf_counter()
rep = build_index(sys.argv[1], sys.argv[2], IndexConfig(split="train", memory_budget_mb=int(sys.argv[3]),
                                                        index_type=sys.argv[4]))
print(json.dumps({"factory": rep.factory, "recall": rep.recall_at_10, "params": rep.search_params,
                  "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


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

    from genoray.config import KmerConfig
    from genoray.embed import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import VectorIndex, l2_normalize, recall_at_k
    from genoray.store import EmbeddingStore, has_manifest

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--budget-mb", type=int, default=4096)
    ap.add_argument("--type", default="auto", help="faiss factory string, or auto")
    ap.add_argument("--work", help="keep the generated store in this directory and reuse it")
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
        shutil.rmtree(work / "index", ignore_errors=True)
        out = subprocess.run([sys.executable, "-c", BUILD, str(work / "store"), str(work / "index"), str(args.budget_mb),
                              args.type], capture_output=True, text=True, check=True)
        build = json.loads(out.stdout.strip().splitlines()[-1])
        store = EmbeddingStore(work / "store")
        base = l2_normalize(store.load("train").vectors)
        queries = l2_normalize(store.load("test").vectors)
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(base)
        idx = VectorIndex.load(work / "index")
        _, truth = flat.search(queries, 10)
        _, found = idx.search(queries, 10)
        recall = recall_at_k(found, truth)
        rows = []
        for mode, single in (("batch of 1000", False), ("one query at a time", True)):
            q_exact = qps(lambda q: flat.search(q, 10), queries if not single else queries[:200], single)
            q_idx = qps(lambda q: idx.search(q, 10), queries, single)
            rows.append((mode, q_exact, q_idx))
        print(f"{args.n} x 256 (4-mer spectra of real-derived sequences); auto index {build['factory']} "
              f"{build['params']}; build {build['seconds']:.1f} s (incl. recall tuning), peak RSS "
              f"{build['peak_rss_mb']:.0f} MiB (budget for vectors {args.budget_mb} MiB); "
              f"recall@10 on 1000 held-out queries: {recall:.3f} (tuning sample: {build['recall']:.3f})")
        print(f"{'search mode (median of 3)':<26} {'exact q/s':>10} {'index q/s':>10} {'speed-up':>9}")
        for mode, a, b in rows:
            print(f"{mode:<26} {a:>10.0f} {b:>10.0f} {b / a:>9.1f}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
