"""Index build on a shared-nothing cluster: 2 worker nodes vs 1, in one run.

The harness of tests/test_cluster_s3.py (tests/shared_nothing.py): a 0-CPU head, worker nodes
in their own mount namespaces with a private /tmp and ~/.cache, moto S3 on 127.0.0.1. A
synthetic store of ``--n`` x ``--d`` vectors (8 parts) is put on S3, then ``genoray index
--ray`` builds it with both worker nodes, and again after one node is stopped. Printed per
build: wall seconds, the manifest's peak worker RSS, the nodes that ran adds and the index
type; then the time ratio (1 node / 2 nodes) and the bytes the build put on S3.

First the bytes a serving node fetches: a bundle of the bundled E. coli set (4 shards) published with
2 shard groups and with 1, and for each group the files a node serving it downloads into an
empty cache (:class:`genoray.serving.scatter.GroupIndex` on the ``s3://`` root), against the
whole version.

``--fresh-node``: a fresh serving node's time to its first answer, instead of the above. A
bundle of ``--serve-n`` x 64 synthetic vectors (a 3-mer encoder record, so queries are real DNA)
is published to ``s3://``; then, ``--repeats`` times, a new worker node is started in its own
mount namespace (empty cache) and timed: node join (``ray start`` until Ray lists it alive) ->
replica scheduled on it (a Ray actor that needs the node's own custom resource, timed to its
constructor) -> bundle files downloaded and hashed into the node cache (``version_dir``, bytes
counted) -> verified (``verify_bundle(cached=True)``: the node's verified record) -> loaded
(``BundleHolder(mmap=True)``, what a replica constructs) -> first ``POST /v1/predict`` answered
over HTTP by the genoray app on that holder (``create_app`` + ``LocalBackend`` under uvicorn: a
HAProxy-topology ``GenorayReplica`` without Serve's wrapper and batching). The last node stays up as the warm node; a +1% night is
then published (``extend_index``, head carried over, content-addressed objects) and the warm
node's move to it is timed the same way, then cold nodes on the new version. Last (unless
``--no-serve``), the Serve path, totals only: ``genoray serve --ingress proxy`` with its replicas
on one worker node; ``--repeats`` times that node is killed and a fresh one started, timed from
its ``ray start`` to the first answer through Serve's proxy on the head.

Usage (root, from the repository): ``python bench/bench_cluster.py [--n 1000000] [--d 64]``,
``python bench/bench_cluster.py --fresh-node [--serve-n 500000] [--repeats 3] [--no-serve]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fresh_node import fresh_node, version_size  # noqa: E402
from genoray.embedding.synthetic import write_synthetic_store  # noqa: E402
from tests.shared_nothing import SharedNothingCluster, why_not  # noqa: E402

BUCKET = "bench-cluster"
DATA = Path(__file__).resolve().parents[1] / "genoray" / "data" / "ecoli_promoter_ipromoter2l.parquet"


def upload(c: SharedNothingCluster, local: Path, prefix: str) -> int:
    """Put every file under ``local`` at ``prefix`` (store.json last); returns the bytes."""
    s3, total = c.s3(), 0
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for p in sorted(files, key=lambda p: p.name == "store.json"):
        s3.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(local)}")
        total += p.stat().st_size
    return total


def build(c: SharedNothingCluster, out: str) -> dict:
    """``genoray index --ray`` of the store into ``out``; wall time and the manifest's numbers."""
    t0 = time.perf_counter()
    c.genoray("index", f"s3://{BUCKET}/store", "--out", f"s3://{BUCKET}/{out}", "--ray", timeout=3600)
    wall = time.perf_counter() - t0
    m = json.loads(c.s3().get_object(Bucket=BUCKET, Key=f"{out}/manifest.json")["Body"].read())
    size = sum(o["Size"] for o in c.s3().list_objects_v2(Bucket=BUCKET, Prefix=f"{out}/").get("Contents", []))
    return {"seconds": round(wall, 1), "factory": m["factory"], "ntotal": m["ntotal"],
            "partitions": m["build"]["partitions"], "add_nodes": len(m["build"]["add_nodes"]),
            "peak_worker_rss_mb": round(m["build"]["peak_worker_rss_mb"], 1),
            "recall_at_10": m["recall_at_10"]["value"], "index_bytes": size}


def group_bytes(c: SharedNothingCluster) -> None:
    """Bytes a node serving one shard group downloads, 2 groups vs 1 (printed)."""
    import os

    from genoray.bundle import read_version
    from genoray.config import IndexConfig
    from genoray.embedding import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.infra import fs
    from genoray.pipeline import train_head, write_bundle
    from genoray.serving.scatter import GroupIndex

    os.environ.update({k: v for k, v in c.env.items() if k.startswith("AWS_")})
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"  # the bundled E. coli promoters (a head needs a real encoder)
        embed_sequences(str(DATA), store, KmerEncoder(), use_ray=False)
        build_index(store, Path(tmp) / "index", IndexConfig(index_type="Flat", shards=4))
        train_head(store, Path(tmp) / "index", Path(tmp) / "head")
        for groups in (2, 1):
            root = f"s3://{BUCKET}/bundles-{groups}"
            v = write_bundle(root, Path(tmp) / "index", Path(tmp) / "head", shard_groups=groups if groups > 1 else None)
            whole = version_size(v, root)  # the distinct objects bundle.json lists (format 2)
            for g in range(groups):
                os.environ["GENORAY_CACHE"] = tempfile.mkdtemp(dir=tmp)
                before = fs.TRANSFERRED["downloaded"]
                GroupIndex(root, v, g)
                got = fs.TRANSFERRED["downloaded"] - before  # not the cache's files: its views are hard links
                print(f"{groups} group(s), group {g}: a serving node fetched {got / 2**20:.2f} MiB of the version's "
                      f"{whole / 2**20:.2f} MiB ({got / whole:.2f}); rows {read_version(root, v).index.ntotal}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--skip-build", action="store_true", help="only the per-group bytes")
    ap.add_argument("--fresh-node", action="store_true", help="a fresh serving node's time to its first answer")
    ap.add_argument("--serve-n", type=int, default=500_000, help="--fresh-node: rows of the served bundle")
    ap.add_argument("--repeats", type=int, default=3, help="--fresh-node: cold nodes per version (medians)")
    ap.add_argument("--no-serve", action="store_true", help="--fresh-node: skip the genoray serve replacement")
    args = ap.parse_args()
    why = why_not()
    if why:
        sys.exit(f"bench_cluster: cannot start the harness: {why}")
    if args.fresh_node:
        fresh_node(args.serve_n, args.repeats, with_serve=not args.no_serve)
        return
    c = SharedNothingCluster(workers=2).start()
    try:
        c.s3().create_bucket(Bucket=BUCKET)
        group_bytes(c)
        if args.skip_build:
            return
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            store = write_synthetic_store(Path(tmp) / "store", args.n, args.d, parts=8, test_fraction=0.01)
            put = upload(c, store, "store")
        print(f"store: {args.n} x {args.d}, {put / 2**20:.0f} MiB on S3 ({time.perf_counter() - t0:.0f} s)", flush=True)
        two = build(c, "index-2nodes")
        print("2 worker nodes:", json.dumps(two), flush=True)
        c.kill_worker(2)
        c.wait_nodes(2)
        one = build(c, "index-1node")
        print("1 worker node: ", json.dumps(one), flush=True)
        print(f"time 1 node / 2 nodes: {one['seconds'] / two['seconds']:.2f}x; peak worker RSS "
              f"{two['peak_worker_rss_mb']:.0f} MiB (2 nodes) vs {one['peak_worker_rss_mb']:.0f} MiB (1 node); "
              f"same index: {two['factory'] == one['factory'] and two['ntotal'] == one['ntotal']}")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
