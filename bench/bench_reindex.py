"""Nightly reindex: the index stage when 1% new rows arrive, incremental (delta) vs full rebuild.

A synthetic store of N x D embedding-like vectors (rank-32 signal + noise, a real store on disk;
the encoder is skipped because it would dominate the run and is the same for both paths) is
indexed once (yesterday's index). Then 1% new rows are appended as a new store part, and in
the same run, each in its own subprocess (peak RSS is its own):

* ``full``: ``build_index`` over the grown store (train, add every row, tune);
* ``incremental``: ``extend_index`` from yesterday's index (shift test, add the delta with the
  trained quantizer, re-tune against exact search over every row).

Both report recall@10 against exact search; the incremental one must stay above the floor.
Repeated ``--repeats`` times in alternating order; medians.

    python bench/bench_reindex.py [--n 1000000] [--dim 256] [--new 0.01] [--floor 0.9] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import json, resource, sys, time
from genoray.config import IndexConfig, ReindexConfig
from genoray.evaluation.shift import drift_rule
from genoray.index import build_index
from genoray.index.delta import extend_index
mode, store, old, out, floor = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
cfg = IndexConfig(split="train")
t0 = time.perf_counter()
if mode == "full":
    rep = build_index(store, out, cfg)
else:
    rep = extend_index(old, store, out, floor, cfg, drift=drift_rule(ReindexConfig.shift_alpha))
print(json.dumps({"seconds": time.perf_counter() - t0, "recall": rep.recall_at_10, "ntotal": rep.ntotal,
                  "factory": rep.factory, "params": rep.search_params,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, work: Path, floor: float) -> dict:
    out = work / f"index-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, "-c", RUN, mode, str(work / "store"), str(work / "v1"), str(out), str(floor)],
                         capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    from genoray.config import IndexConfig
    from genoray.embedding.synthetic import append_synthetic_rows, write_synthetic_store
    from genoray.index import build_index

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--new", type=float, default=0.01, help="fraction of new rows")
    ap.add_argument("--floor", type=float, default=0.9, help="recall@10 floor of the nightly gate")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", help="keep files here")
    ap.add_argument("--reuse", action="store_true", help="reuse the store (already grown) and v1 index in --work")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-reindex-"))
    try:
        if args.reuse:
            from genoray.index import VectorIndex

            v1 = VectorIndex.load(work / "v1")
            v1.factory, v1.recall_at_10 = v1.manifest.factory, v1.manifest.recall_at_10.value
        else:
            write_synthetic_store(work / "store", args.n, args.dim, parts=max(1, args.n // 125_000),
                                  test_fraction=0.001)
            v1 = build_index(work / "store", work / "v1", IndexConfig(split="train"))
            append_synthetic_rows(work / "store", int(args.n * args.new), seed=0)  # same distribution, new rows
        results: dict[str, list[dict]] = {"full": [], "incremental": []}
        for r in range(args.repeats):
            for mode in (("full", "incremental") if r % 2 == 0 else ("incremental", "full")):
                results[mode].append(run(mode, work, args.floor))
        med = {m: statistics.median(x["seconds"] for x in v) for m, v in results.items()}
        print(f"{args.n} x {args.dim} + {args.new:.0%} new rows; yesterday's index {v1.factory}, recall@10 "
              f"{v1.recall_at_10:.3f}; floor {args.floor}")
        print(f"{'index stage':<12} {'seconds':>8} {'recall@10':>9} {'peak MiB':>9} {'ntotal':>9}")
        for m, v in results.items():
            last = v[-1]
            print(f"{m:<12} {med[m]:>8.1f} {last['recall']:>9.3f} {last['peak_rss_mb']:>9.0f} {last['ntotal']:>9}")
        ratio = med["incremental"] / med["full"]
        ok = ratio < 0.2 and all(x["recall"] >= args.floor for x in results["incremental"])
        print(f"incremental / full wall time: {ratio:.3f} (target < 0.20); recall above the floor: "
              f"{all(x['recall'] >= args.floor for x in results['incremental'])} -> {'PASS' if ok else 'FAIL'}")
        print(json.dumps({"n": args.n, "dim": args.dim, "results": results, "ratio": ratio}))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
