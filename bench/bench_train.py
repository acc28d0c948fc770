"""Head fit at scale (issue #12 item 3): time and peak memory of ``train_head`` on synthetic
stores of 250k and 1M rows (350-dim, the ``kmer`` width), the capacity plan beside them, and the
new bounded head beside today's (quadratic) head on the seven shared datasets.

Part 1 writes each store through the real store format (Parquet parts + ``store.json`` with
sha256), then runs ``build_index`` (auto type) and ``train_head`` each in a fresh subprocess
and reports wall time and peak RSS (``ru_maxrss`` of that process) beside
:func:`genoray.index.capacity.estimate` for the same size (index: one-process build; head: the bounded
fit), with the per-core FLOP rate the plan uses measured in the same run. Vectors have
structure: 4 classes, each a mixture of 16 Gaussian clusters, clusters of different classes
overlapping. Targets: time(1M) / time(250k) <= 5 and peak RSS <= 2 GB at 1M (head fit).

Part 2 (unless ``--no-datasets``) fits, on the train split of each shared dataset (``kmer``):

* ``today``: the version-1 fused head as it was before issues #12/#17 (kNN + linear; the kNN
  validation votes by exact search of the validation rows against the fit rows; the linear
  part on every row; the OOD reference by exact all-against-all leave-one-out search:
  quadratic in the rows), reproduced in ``bench_heads.LegacyFusedHead`` + the OOD search;
* ``new``: :class:`genoray.heads.FusedHead` with ``--head`` (default: ``HeadConfig``'s
  default), the bounded fit (``max_rows`` sample, validation votes and OOD reference from
  index searches that exclude the query's own rows);
* ``auto`` (with ``--auto``): the same with ``head="auto"`` (for information),

and prints accuracy / MCC / AUROC on the test split side by side. Target: no dataset's MCC
of ``new`` more than 0.01 below ``today``.

    python bench/bench_train.py [--sizes 250000,1000000] [--head linear] [--no-datasets] [--out r.json]
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

    from genoray.embedding import store as schema
    from genoray.infra.artifacts import sha256_file

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
        parts.append(schema.StorePart(file=f, rows=m, sha256=sha256_file(path / f), source="synthetic"))
    schema.write_manifest(path, schema.StoreManifest(
        format_version=schema.StoreManifest.FORMAT_VERSION, encoder={"name": "synthetic", "dim": DIM},
        fingerprint=f"synthetic-{DIM}", dim=DIM, status="complete", rows=n,
        counts=schema.StoreCounts(read=n, accepted=n, rejected=0, written=n), parts=tuple(parts)))


INDEX_CHILD = """
import json, resource, sys, time
from genoray.config import IndexConfig
from genoray.index import build_index
t = time.perf_counter()
rep = build_index(sys.argv[1], sys.argv[2], IndexConfig(split="train", recall_queries=200), use_ray=False)
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"factory": rep.factory, "recall": rep.recall_at_10, "wall_s": time.perf_counter() - t,
                  "peak_rss_mib": u.ru_maxrss / 1024, "cpu_s": u.ru_utime + u.ru_stime}))
"""

CHILD = """
import json, resource, sys, time
from genoray.config import HeadConfig
from genoray.pipeline.train import train_head
store, index, out, head, max_rows = sys.argv[1:6]
t = time.perf_counter()
r = train_head(store, index, out, HeadConfig(head=head, max_rows=int(max_rows)))
r["wall_s"] = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_SELF)
r["peak_rss_mib"], r["cpu_s"] = u.ru_maxrss / 1024, u.ru_utime + u.ru_stime
print(json.dumps(r))
"""


def child(code: str, *argv) -> dict:
    """Run ``code`` in a fresh interpreter (its own peak RSS) and parse its last stdout line."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def err(pred: float, meas: float) -> str:
    return f"{(pred - meas) / meas:+.0%}"


def scale(sizes: list[int], head: str, max_rows: int, work: Path, gflops: float) -> list[dict]:
    from genoray.config import HeadConfig, IndexConfig
    from genoray.index.capacity import MB, ClusterSpec, estimate

    rows = []
    for n in sizes:
        d = work / f"n{n}"
        t0 = time.perf_counter()
        write_store(d / "store", n)
        write_s = time.perf_counter() - t0
        ix = child(INDEX_CHILD, d / "store", d / "index")
        r = child(CHILD, d / "store", d / "index", d / "head", head, max_rows)
        plan = estimate(n, DIM, IndexConfig(split="train", recall_queries=200), ClusterSpec(gflops_per_core=gflops),
                        partition_rows=PART_ROWS, head=HeadConfig(head=head, max_rows=max_rows))
        pi, ph = plan.stages["index"], plan.stages["head"]
        r.update(n=n, write_s=write_s, index=ix, plan={
            "index_s": pi["single_process_s"], "index_mib": pi["peak_single_process_bytes"] / MB,
            "head_s": ph["seconds"], "head_mib": ph["peak_bytes"] / MB, "factory": plan.factory})
        print(f"n={n:>9,}: store written {write_s:.0f} s; index {ix['factory']} recall {ix['recall']:.3f}: "
              f"{ix['wall_s']:.1f} s ({ix['cpu_s']:.0f} CPU s; plan {pi['single_process_s']:.1f} s, ratio "
              f"{ix['wall_s'] / pi['single_process_s']:.2f}), peak RSS {ix['peak_rss_mib']:.0f} MiB "
              f"(plan {r['plan']['index_mib']:.0f}, err {err(r['plan']['index_mib'], ix['peak_rss_mib'])})", flush=True)
        print(f"             train_head {r['wall_s']:.1f} s ({r['cpu_s']:.0f} CPU s; plan {ph['seconds']:.1f} s, ratio "
              f"{r['wall_s'] / ph['seconds']:.2f}), peak RSS {r['peak_rss_mib']:.0f} MiB (plan "
              f"{r['plan']['head_mib']:.0f}, err {err(r['plan']['head_mib'], r['peak_rss_mib'])}), rows used "
              f"{r['rows_used']:,}, chose {r['chosen']} ({r['calibration_method']})", flush=True)
        rows.append(r)
    return rows


def fit_today(tr, seed: int = 0):
    """Today's head as it was fitted before the bounded fit: the version-1 fused head
    (``bench_heads.LegacyFusedHead``) plus its OOD reference, an exact all-against-all
    leave-one-out search of the training rows (the quadratic part; it does not change the
    predictions, only the fit's cost)."""
    from bench_heads import LegacyFusedHead

    head = LegacyFusedHead(seed=seed).fit(tr.vectors, tr.labels)
    sims, _ = head.knn_.kneighbors(tr.vectors, exclude_self=True)
    head.ood_reference_ = np.sort(1.0 - sims[:, -1])
    return head


def datasets(head_mode: str, with_auto: bool, max_rows: int) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_heads import DATASETS, load_split

    from genoray.config import HeadConfig
    from genoray.evaluation.metrics import classification_metrics
    from genoray.heads import FusedHead
    from genoray.index import VectorIndex

    heads = {"today": None, "new": head_mode, **({"auto": "auto"} if with_auto else {})}
    print(f"{'dataset':<28} {'rows':>6} " + " ".join(f"{h + ' (' + (m or 'v1') + ')':>24}" for h, m in heads.items())
          + f" {'MCC diff':>9} {'fit s today/new':>16}")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in DATASETS:
            tr, te = load_split(name, "kmer", Path(tmp))
            index = VectorIndex.from_vectors(tr.vectors, tr.ids, tr.labels)
            res = {}
            for key, mode in heads.items():
                t0 = time.perf_counter()
                if mode is None:
                    h = fit_today(tr)
                else:
                    h = FusedHead.from_config(HeadConfig(head=mode, max_rows=max_rows))
                    h.fit(tr.vectors, tr.labels, index=index, ids=tr.ids)
                fit_s = time.perf_counter() - t0
                res[key] = {**classification_metrics(te.labels, h.predict_proba(te.vectors), h.classes_), "fit_s": fit_s}
            res.update(dataset=name, train_rows=len(tr), test_rows=len(te), diff=res["new"]["mcc"] - res["today"]["mcc"])
            out.append(res)
            cells = " ".join(f"{res[k]['accuracy']:.3f}/{res[k]['mcc']:.3f}/{res[k]['auroc']:.3f}".rjust(24) for k in heads)
            print(f"{name:<28} {len(tr):>6} {cells} {res['diff']:>+9.3f} "
                  f"{res['today']['fit_s']:>7.2f}/{res['new']['fit_s']:<7.2f}", flush=True)
    print("(cells: test accuracy / MCC / AUROC; MCC diff = new - today)")
    return out


def main() -> None:
    from genoray.config import HeadConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250000,1000000", help="store rows, comma-separated ('' skips part 1)")
    ap.add_argument("--head", default=HeadConfig().head, choices=("linear", "trees", "auto"))
    ap.add_argument("--max-rows", type=int, default=HeadConfig().max_rows,
                    help="the head's sample bound (part 1 and the new heads of part 2)")
    ap.add_argument("--no-datasets", action="store_true")
    ap.add_argument("--auto", action="store_true", help="part 2 also fits head='auto' (trees; slower)")
    ap.add_argument("--out", help="write the raw results as JSON")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    raw: dict = {}
    if sizes:
        from bench_index import measure_gflops_per_core

        gflops = measure_gflops_per_core()
        print(f"faiss kNN rate now {gflops:.1f} GFLOP/s per core (the plan's time model uses it)", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            rows = scale(sizes, args.head, args.max_rows, Path(tmp), gflops)
        raw.update(gflops_per_core=gflops, sizes=rows)
    if len(sizes) >= 2:
        first, last = rows[0], rows[-1]
        ratio = last["wall_s"] / first["wall_s"]
        cpu = last["cpu_s"] / first["cpu_s"]
        raw["ratio"] = {"wall": ratio, "cpu": cpu}
        print(f"train_head time ratio {last['n']:,} / {first['n']:,} rows: {ratio:.2f} wall, {cpu:.2f} CPU "
              f"for {last['n'] / first['n']:.0f}x rows (target <= 5: {'PASS' if ratio <= 5 else 'FAIL'}); peak RSS at "
              f"{last['n']:,}: {last['peak_rss_mib']:.0f} MiB (target <= 2048: "
              f"{'PASS' if last['peak_rss_mib'] <= 2048 else 'FAIL'})")
    if not args.no_datasets:
        print(f"\nshared datasets (kmer): today's head (version 1, exact, quadratic) vs the new bounded head "
              f"(head={args.head}, max_rows={args.max_rows:,})")
        res = datasets(args.head, args.auto, args.max_rows)
        worst = min(r["diff"] for r in res)
        raw["datasets"] = res
        print(f"worst MCC difference new - today {worst:+.3f} (target >= -0.01: {'PASS' if worst >= -0.01 else 'FAIL'})")
    if args.out:
        Path(args.out).write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
