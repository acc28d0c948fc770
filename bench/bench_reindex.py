"""Nightly reindex: the index stage when 1% new rows arrive, incremental (delta) vs full rebuild.

A synthetic store of N x D embedding-like vectors (rank-32 signal + noise, a real store on disk;
the encoder is skipped because it would dominate the run and is the same for both paths) is
indexed once (yesterday's index). Then 1% new rows are appended as a new store part, and in
the same run, each in its own subprocess (peak RSS is its own):

* ``full``: ``build_index`` over the grown store (train, add every row, tune);
* ``incremental``: ``extend_index`` from yesterday's index (shift test, add the delta with the
  trained quantizer, re-tune against the exact top-10 over every row, which yesterday's recall
  calibration set gives from an exact pass over the new rows only);
* ``incremental-full-pass``: the same from a copy of yesterday's index without its calibration
  set (hard links; what indexes built before it have), so the exact pass reads every row, as
  every night did before calibration sets.

Each incremental run reports its exact pass: rows read (``exact_rows``) and seconds (``exact_s``).

Both report recall@10 against exact search; the incremental one must stay above the floor.
Repeated ``--repeats`` times in alternating order; medians.

    python bench/bench_reindex.py [--n 1000000] [--dim 256] [--new 0.01] [--floor 0.9] [--repeats 1]

``--object-storage`` (default N = 200k x 64) measures a whole night against a bundle root on a
moto S3 server started in this process (content-addressed bundles, :mod:`genoray.bundle.objects`):
yesterday's full build + head + publish, a serving node that fetched it; then +1% rows and the
night (``extend_index`` + the head, carried over or refitted as ``genoray.pipeline.reindex`` decides, + publish), the node fetching the new version; and a full
rebuild (build + head + publish of the grown store to a fresh root). Bytes are counted at the
fs layer (:data:`genoray.infra.fs.TRANSFERRED`: every object PUT and GET body of
``write_bytes``/``upload``/``download``; listings, HEADs and ``bundle.json`` reads are not
counted). Reports the night's uploaded bytes / the full publish's, the node's downloaded bytes
/ the whole new version's, and the night's time / the full rebuild's.

    python bench/bench_reindex.py --object-storage [--n 200000] [--dim 64] [--new 0.01]
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
old = old + "-nocal" if mode == "incremental-full-pass" else old
cfg = IndexConfig(split="train")
t0 = time.perf_counter()
if mode == "full":
    rep = build_index(store, out, cfg)
else:
    rep = extend_index(old, store, out, floor, cfg, drift=drift_rule(ReindexConfig.shift_alpha))
print(json.dumps({"seconds": time.perf_counter() - t0, "recall": rep.recall_at_10, "ntotal": rep.ntotal,
                  "factory": rep.factory, "params": rep.search_params,
                  "exact_rows": rep.predicted.get("exact_rows_read"), "exact_s": rep.predicted.get("exact_s"),
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


def without_calibration(v1: Path) -> Path:
    """``v1-nocal``: ``v1``'s files hard-linked, its manifest without the calibration set."""
    import dataclasses

    from genoray.index.manifest import CALIBRATION, MANIFEST, read_manifest, write_manifest

    dst = v1.with_name(v1.name + "-nocal")
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    for f in v1.iterdir():
        if f.is_file() and f.name not in (MANIFEST, CALIBRATION):
            (dst / f.name).hardlink_to(f)
    write_manifest(dst, dataclasses.replace(read_manifest(v1), calibration=None, format_version=4))
    return dst


def object_storage(n: int, dim: int, new: float, floor: float, work: Path,
                   refit_fraction: float | None = None) -> dict:
    """The ``--object-storage`` run (see the module doc); returns the measured numbers."""
    import logging
    import os
    import time

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
    from genoray.bundle import publish, read_version, version_dir, write_version
    from genoray.config import HeadConfig, IndexConfig, ReindexConfig
    from genoray.embedding.synthetic import append_synthetic_rows, write_synthetic_store
    from genoray.evaluation.shift import drift_rule
    from genoray.index import build_index
    from genoray.index.delta import extend_index
    from genoray.infra import fs
    from genoray.pipeline.reindex import head_refit_reason
    from genoray.pipeline.train import train_head

    cfg, head_cfg = IndexConfig(split="train"), HeadConfig()
    refit_fraction = ReindexConfig.head_refit_fraction if refit_fraction is None else refit_fraction

    def measured(step):  # (seconds, bytes uploaded, bytes downloaded, result)
        up, down, t0 = fs.TRANSFERRED["uploaded"], fs.TRANSFERRED["downloaded"], time.perf_counter()
        out = step()
        return (time.perf_counter() - t0, fs.TRANSFERRED["uploaded"] - up, fs.TRANSFERRED["downloaded"] - down, out)

    stages: dict[str, dict[str, float]] = {}
    heads: dict[str, str] = {}  # per release: "carried" or why the head was refitted

    def release(root: str, index_dir: Path, head_dir: Path, name: str, t0: float, carry: Path | None = None) -> str:
        os.environ["GENORAY_CACHE"] = str(work / f"cache-{name}")  # the publisher's node
        t1 = time.perf_counter()
        # the night decides as genoray.pipeline.reindex does: carry the current head or refit it
        reason = "not a night" if carry is None else head_refit_reason(carry, index_dir, head_cfg, refit_fraction)
        if reason is None:
            shutil.copytree(carry, head_dir)
        else:
            train_head(work / "store", index_dir, head_dir, head_cfg)
        heads[name] = reason or "carried"
        t2 = time.perf_counter()
        v = write_version(root, index_dir, head_dir)
        publish(root, v)
        stages[name] = {"index": t1 - t0, "head": t2 - t1, "publish": time.perf_counter() - t2}
        return v

    def fetch(root: str, v: str) -> Path:
        os.environ["GENORAY_CACHE"] = str(work / "cache-serving")  # one serving node, all night
        return version_dir(root, v)

    def size(root: str, v: str) -> int:
        files = read_version(root, v).files
        return sum(fs.info(fs.join(root, "objects", d[:2], d))[1] for d in set(files.values()))

    try:
        write_synthetic_store(work / "store", n, dim, parts=max(1, n // 25_000), test_fraction=0.01)
        root, fresh = "s3://bench/nightly", "s3://bench/rebuild"

        def yesterday() -> str:
            t0 = time.perf_counter()
            build_index(work / "store", work / "index1", cfg)
            return release(root, work / "index1", work / "head1", "v1", t0)

        t_v1, up_v1, _, v1 = measured(yesterday)
        _, _, down_v1, _ = measured(lambda: fetch(root, v1))
        append_synthetic_rows(work / "store", int(n * new), seed=0)

        def night() -> str:
            t0 = time.perf_counter()
            extend_index(work / "index1", work / "store", work / "index2", floor, cfg,
                         drift=drift_rule(ReindexConfig.shift_alpha))
            return release(root, work / "index2", work / "head2", "v2", t0, carry=work / "head1")

        def rebuild() -> str:
            t0 = time.perf_counter()
            build_index(work / "store", work / "index-full", cfg)
            return release(fresh, work / "index-full", work / "head-full", "full", t0)

        t_night, up_night, _, v2 = measured(night)
        _, _, down_v2, _ = measured(lambda: fetch(root, v2))
        t_full, up_full, _, vf = measured(rebuild)
        r = {"n": n, "dim": dim, "new": new, "yesterday_s": t_v1, "yesterday_uploaded": up_v1,
             "node_downloaded_v1": down_v1, "night_s": t_night, "night_uploaded": up_night,
             "node_downloaded_v2": down_v2, "v2_bytes": size(root, v2), "full_s": t_full, "full_uploaded": up_full,
             "full_bytes": size(fresh, vf), "stages": stages, "heads": heads}
    finally:
        server.stop()
    r.update(upload_ratio=r["night_uploaded"] / r["full_uploaded"], download_ratio=r["node_downloaded_v2"] / r["v2_bytes"],
             time_ratio=r["night_s"] / r["full_s"])
    mib = 2**20
    print(f"{n:,} x {dim} + {new:.0%} new rows on a moto S3 server (bytes counted at genoray.infra.fs)")
    print(f"{'step':<34} {'seconds':>8} {'MiB up':>9} {'MiB down':>9}")
    print(f"{'yesterday: build + head + publish':<34} {t_v1:>8.1f} {up_v1 / mib:>9.2f} {'':>9}")
    print(f"{'node fetches yesterday':<34} {'':>8} {'':>9} {down_v1 / mib:>9.2f}")
    print(f"{'night: extend + head + publish':<34} {t_night:>8.1f} {up_night / mib:>9.2f} {'':>9}")
    print(f"{'node fetches the night':<34} {'':>8} {'':>9} {down_v2 / mib:>9.2f}")
    print(f"{'full rebuild + head + publish':<34} {t_full:>8.1f} {up_full / mib:>9.2f} {'':>9}")
    print("seconds per stage (index / head / write + publish): " + "; ".join(
        f"{k} {v['index']:.1f} / {v['head']:.1f} / {v['publish']:.1f}" for k, v in stages.items()))
    print(f"night's head: {heads['v2']}")
    for name, key, target in (("uploaded, night / full publish", "upload_ratio", 0.05),
                              ("node download / whole new version", "download_ratio", 0.05),
                              ("time, night / full rebuild", "time_ratio", 0.20)):
        print(f"{name:<34} {r[key]:>8.3f} (target <= {target:.2f}) {'PASS' if r[key] <= target else 'FAIL'}")
    print(json.dumps(r))
    return r


def main() -> None:
    from genoray.config import IndexConfig
    from genoray.embedding.synthetic import append_synthetic_rows, write_synthetic_store
    from genoray.index import build_index

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=None, help="rows (default 1M; 200k with --object-storage)")
    ap.add_argument("--dim", type=int, default=None, help="dimensions (default 256; 64 with --object-storage)")
    ap.add_argument("--new", type=float, default=0.01, help="fraction of new rows")
    ap.add_argument("--floor", type=float, default=0.9, help="recall@10 floor of the nightly gate")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", help="keep files here")
    ap.add_argument("--reuse", action="store_true", help="reuse the store (already grown) and v1 index in --work")
    ap.add_argument("--object-storage", action="store_true", help="a whole night on a moto S3 bundle root")
    ap.add_argument("--head-refit-fraction", type=float, default=None,
                    help="with --object-storage: ReindexConfig.head_refit_fraction (0: refit the head every night)")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-reindex-"))
    if args.object_storage:
        try:
            object_storage(args.n or 200_000, args.dim or 64, args.new, args.floor, work, args.head_refit_fraction)
        finally:
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
        return
    args.n, args.dim = args.n or 1_000_000, args.dim or 256
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
        without_calibration(work / "v1")
        results: dict[str, list[dict]] = {"full": [], "incremental": [], "incremental-full-pass": []}
        modes = ("full", "incremental", "incremental-full-pass")
        for r in range(args.repeats):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                results[mode].append(run(mode, work, args.floor))
        med = {m: statistics.median(x["seconds"] for x in v) for m, v in results.items()}
        print(f"{args.n} x {args.dim} + {args.new:.0%} new rows; yesterday's index {v1.factory}, recall@10 "
              f"{v1.recall_at_10:.3f}; floor {args.floor}")
        print(f"{'index stage':<22} {'seconds':>8} {'recall@10':>9} {'peak MiB':>9} {'ntotal':>9} {'exact rows':>10} "
              f"{'exact s':>8}")
        for m, v in results.items():
            last = v[-1]
            ex_s = statistics.median(x["exact_s"] for x in v) if last.get("exact_s") is not None else None
            print(f"{m:<22} {med[m]:>8.1f} {last['recall']:>9.3f} {last['peak_rss_mb']:>9.0f} {last['ntotal']:>9} "
                  f"{last.get('exact_rows') or '':>10} {'' if ex_s is None else f'{ex_s:.1f}':>8}")
        print(f"incremental with / without calibration, wall time: {med['incremental'] / med['incremental-full-pass']:.3f}")
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
