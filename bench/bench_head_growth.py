"""How ``genoray train`` (the head fit) grows with the store: wall time and peak RSS of
:func:`genoray.pipeline.train.train_head` on synthetic unclustered stores of several sizes.

Each store is an ordinary store (:func:`genoray.embedding.synthetic.write_synthetic_store`,
``rank = dim``: a Gaussian with a random full-rank covariance, no clusters, labels from the
sign of one coordinate, 10% test rows), indexed with the default settings (``auto`` type, the
recall-tuned ``nprobe``), then ``train_head`` runs in a fresh interpreter (its own peak RSS).
The same script run from two checkouts gives a same-machine before/after.

    python bench/bench_head_growth.py [--sizes 50000,200000] [--dim 64] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

INDEX = """
import json, sys, time
from genoray.config import IndexConfig
from genoray.embedding.synthetic import write_synthetic_store
from genoray.index import build_index
n, d, store, index = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
write_synthetic_store(store, n, d, parts=max(1, n // 25000), test_fraction=0.1, rank=d)
t = time.perf_counter()
rep = build_index(store, index, IndexConfig(split="train"), use_ray=False)
print(json.dumps({"factory": rep.factory, "recall": rep.recall_at_10, "index_s": time.perf_counter() - t,
                  "search_params": rep.search_params}))
"""

TRAIN = """
import json, resource, sys, time
from genoray.pipeline.train import train_head
t = time.perf_counter()
r = train_head(sys.argv[1], sys.argv[2], sys.argv[3])
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": time.perf_counter() - t, "peak_rss_mib": u.ru_maxrss / 1024,
                  "cpu_s": u.ru_utime + u.ru_stime, "rows_used": r["rows_used"], "val_log_loss": r["val_log_loss"]}))
"""


def child(code: str, *argv) -> dict:
    """Run ``code`` in a fresh interpreter and parse its last stdout line."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,200000")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-head-growth-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            d = Path(tmp) / f"n{n}"
            ix = child(INDEX, n, args.dim, d / "store", d / "index")
            tr = child(TRAIN, d / "store", d / "index", d / "head")
            rows.append({"n": n, **ix, **tr})
            print(f"n={n:>9,} index {ix['factory']} {ix['search_params']} recall {ix['recall']:.3f} "
                  f"({ix['index_s']:.0f} s); train_head {tr['wall_s']:.1f} s wall, {tr['cpu_s']:.0f} CPU s, "
                  f"peak RSS {tr['peak_rss_mib']:.0f} MiB, rows used {tr['rows_used']:,}", flush=True)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"train_head time ratio {b['n']:,} / {a['n']:,} rows: {b['wall_s'] / a['wall_s']:.2f} "
              f"for {b['n'] / a['n']:.0f}x rows")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
