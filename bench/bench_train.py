"""Head fit at scale (issue #12 item 3): time and peak memory of ``train_head`` on synthetic
stores of 250k and 1M rows (350-dim, the ``kmer`` width), and the new head beside today's on
the seven shared datasets.

Part 1 writes each store through the real store format (Parquet parts + ``store.json`` with
sha256), builds its index with ``build_index`` (auto type), then runs ``train_head`` in a fresh
subprocess and reports its wall time and peak RSS (``ru_maxrss``). Vectors have structure:
4 classes, each a mixture of 16 Gaussian clusters, clusters of different classes overlapping.
Targets: time(1M) / time(250k) <= 5 and peak RSS <= 2 GB at 1M.

Part 2 (unless ``--no-datasets``) fits today's (version-1) fused head and the new default
head (``auto``, index-based, bounded) on the shared datasets (``kmer``) and prints the MCC
difference (target: no dataset below -0.01).

    python bench/bench_train.py [--sizes 250000,1000000] [--head auto] [--no-datasets]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 350
PART_ROWS = 125_000


def write_store(path: Path, n: int, seed: int = 0) -> None:
    """A synthetic store of ``n`` train rows in the real format (one Parquet file per 125k rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genoray import schema
    from genoray.artifacts import sha256_file, write_json

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1).normal(size=(64, DIM)).astype(np.float32)
    centre_class = np.repeat(np.arange(4), 16)
    (path / "shards").mkdir(parents=True)
    parts = []
    for a in range(0, n, PART_ROWS):
        m = min(PART_ROWS, n - a)
        c = rng.integers(0, 64, size=m)
        vec = centres[c] + 1.5 * rng.normal(size=(m, DIM)).astype(np.float32)
        labels = np.array(["abcd"[k] for k in centre_class[c]], dtype=object)
        flip = rng.random(m) < 0.05  # label noise
        labels[flip] = rng.choice(list("abcd"), size=int(flip.sum()))
        table = pa.table({
            schema.SEQ_ID: pa.array([f"r{i}" for i in range(a, a + m)]),
            schema.LABEL: pa.array(labels.tolist()),
            schema.DOMAIN: pa.nulls(m, pa.string()),
            schema.SPLIT: pa.array(["train"] * m),
            schema.SEQ_HASH: pa.nulls(m, pa.string()),
            schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), DIM),
        }, schema=schema.embedding_schema(DIM))
        f = f"shards/part-{a // PART_ROWS:04d}.parquet"
        pq.write_table(table, path / f)
        parts.append({"file": f, "rows": m, "sha256": sha256_file(path / f), "source": "synthetic",
                      "row_groups": None, "byte_range": None, "rejects": None})
    write_json(path / "store.json", {
        "format_version": 2, "encoder": {"name": "synthetic", "dim": DIM}, "fingerprint": f"synthetic-{DIM}",
        "dim": DIM, "status": "complete", "rows": n,
        "counts": {"read": n, "accepted": n, "rejected": 0, "rejected_by_reason": {}, "written": n},
        "failed": [], "parts": parts,
    })


CHILD = """
import json, resource, sys, time
from genoray.config import HeadConfig
from genoray.train import train_head
store, index, out, head, max_rows = sys.argv[1:6]
t = time.perf_counter()
r = train_head(store, index, out, HeadConfig(head=head, max_rows=int(max_rows)))
r["wall_s"] = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_SELF)
r["peak_rss_mib"], r["cpu_s"] = u.ru_maxrss / 1024, u.ru_utime + u.ru_stime
print(json.dumps(r))
"""


def scale(sizes: list[int], head: str, max_rows: int, work: Path) -> list[dict]:
    from genoray.config import IndexConfig
    from genoray.index import build_index

    rows = []
    for n in sizes:
        d = work / f"n{n}"
        t0 = time.perf_counter()
        write_store(d / "store", n)
        t1 = time.perf_counter()
        rep = build_index(d / "store", d / "index", IndexConfig(split="train", recall_queries=200))
        t2 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(d / "store"), str(d / "index"), str(d / "head"), head,
                              str(max_rows)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(n=n, write_s=t1 - t0, index_s=t2 - t1, factory=rep.factory)
        print(f"n={n:>9,}: store {r['write_s']:.0f} s, index {rep.factory} {r['index_s']:.0f} s; train_head "
              f"{r['wall_s']:.1f} s ({r['cpu_s']:.0f} CPU s), peak RSS {r['peak_rss_mib']:.0f} MiB, rows used {r['rows_used']:,}, "
              f"chose {r['chosen']} ({r['calibration_method']})", flush=True)
        rows.append(r)
    return rows


def datasets(threads: int) -> list[tuple[str, float, float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_heads import DATASETS, load_split, run_cell

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in DATASETS:
            tr, te = load_split(name, "kmer", Path(tmp))
            cell = run_cell(tr, te, threads, n_boot=0, methods=("baseline", "auto"))
            out.append((name, cell["baseline"]["mcc"], cell["auto"]["mcc"]))
            print(f"  {name:<28} today MCC {out[-1][1]:.3f}  new (auto) {out[-1][2]:.3f}  "
                  f"diff {out[-1][2] - out[-1][1]:+.3f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250000,1000000")
    ap.add_argument("--head", default="auto", choices=("linear", "trees", "auto"))
    ap.add_argument("--max-rows", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=0, help="tree threads in part 2 (0 = all cores)")
    ap.add_argument("--no-datasets", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        rows = scale(sizes, args.head, args.max_rows, Path(tmp))
    if len(rows) >= 2:
        ratio = rows[-1]["wall_s"] / rows[0]["wall_s"]
        grow = rows[-1]["n"] / rows[0]["n"]
        cpu = rows[-1]["cpu_s"] / rows[0]["cpu_s"]
        print(f"train_head time ratio {rows[-1]['n']:,} / {rows[0]['n']:,} rows: {ratio:.2f} wall, {cpu:.2f} CPU "
              f"for {grow:.0f}x rows "
              f"(target <= 5: {'PASS' if ratio <= 5 else 'FAIL'}); peak RSS at {rows[-1]['n']:,}: "
              f"{rows[-1]['peak_rss_mib']:.0f} MiB (target <= 2048: "
              f"{'PASS' if rows[-1]['peak_rss_mib'] <= 2048 else 'FAIL'})")
    if not args.no_datasets:
        print("\nshared datasets (kmer): today's fused head vs the new head")
        res = datasets(args.threads)
        worst = min(b - a for _, a, b in res)
        print(f"worst MCC difference {worst:+.3f} (target >= -0.01: {'PASS' if worst >= -0.01 else 'FAIL'})")


if __name__ == "__main__":
    main()
