"""Where a one-sequence request to a 2-group bundle spends its time (issue 24 item 3).

Builds the ``bench_serve.py --groups 2`` bundle and times, hop by hop, in one process at one
request at a time (medians of ``--n`` calls):

* ``predict, all groups in-process``: ``predict_batch`` of one request over a ``GroupHolder``
  whose groups are all searched in this process (``local_groups_mb``; what a replica then does);
* ``search, one group in-process``: ``GroupIndex.search`` of one group; ``merge``: ``merge_parts``;
* ``embed + head``: the predict above minus its search;
* ``Ray call per group``: ``await handle.search.remote(...)`` of a ``searcher-<g>`` Serve
  deployment from the caller's event loop (Serve's DeploymentHandle), both groups concurrently
  as the scatter does, and a plain Ray actor of the same class for comparison;
* ``thread -> loop hop``: ``run_coroutine_threadsafe`` of an empty coroutine from a worker
  thread (the scatter's hop from the predictor's thread to the replica's loop).

FAISS runs on one thread (``OMP_NUM_THREADS=1``, what Ray gives a replica of <= 1 CPU; on a
loaded 2-core host two OpenMP threads made one group's search 8-24 ms instead of 0.14).
The HTTP and HAProxy hops are not timed here: they are what a one-group bundle behind HAProxy
costs on top of the in-process predict (``bench_serve.py`` runs it in the same run).

    python bench/profile_groups.py [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as in a Serve replica of <= 1 CPU (FAISS on one thread)


def med_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def main() -> None:
    import numpy as np
    import pyarrow.parquet as pq
    import ray
    from bench_serve import make_bundle
    from ray import serve

    from genoray.bundle import current_version, publish
    from genoray.pipeline.quickstart import bundled_dataset
    from genoray.serving.backends import predict_batch
    from genoray.serving.scatter import GenoraySearcher, GroupHolder, GroupIndex, gather_async, merge_parts
    from genoray.serving.service import PredictRequest

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profile-groups-"))
    root = work / "bundles"
    publish(root, make_bundle(work, root, 0, 2))
    version = current_version(root)
    seq = pq.read_table(bundled_dataset(), columns=["sequence"])["sequence"].to_pylist()[:1]
    req = PredictRequest(sequences=seq, k=5)
    rows: list[tuple[str, float]] = []

    holder = GroupHolder(str(root), 3600, [None, None], local_groups_mb=1024)
    assert sorted(holder.local[version]) == [0, 1]
    predictor, _ = holder.snapshot()
    xv = np.asarray(predictor.encoder.embed(seq), np.float32)
    t = []
    for _ in range(args.n):
        t0 = time.perf_counter()
        predictor.encoder.embed(seq)
        t.append(time.perf_counter() - t0)
    rows.append(("embed (k-mer encoder), 1 sequence", med_ms(t)))
    t = []
    for _ in range(args.n):
        t0 = time.perf_counter()
        predict_batch(holder_batch(holder), [req])
        t.append(time.perf_counter() - t0)
    rows.append(("predict, both groups in-process (embed, 2 searches, merge, head)", med_ms(t)))
    groups = [GroupIndex(root, version, g) for g in (0, 1)]
    for g, idx in enumerate(groups):
        t = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            idx.search(xv, 6)
            t.append(time.perf_counter() - t0)
        rows.append((f"search, group {g} in-process", med_ms(t)))
    parts = {g: {**idx.search(xv, 6), "replica": "r"} for g, idx in enumerate(groups)}
    t = []
    for _ in range(args.n):
        t0 = time.perf_counter()
        merge_parts(parts, version, 6)
        t.append(time.perf_counter() - t0)
    rows.append(("merge of 2 groups", med_ms(t)))
    holder.close()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        handles = [serve.run(serve.deployment(GenoraySearcher).options(name=f"searcher-{g}", num_replicas=1,
                                                                        ray_actor_options={"num_cpus": 0.25})
                             .bind(str(root), g, 3600), name=f"s{g}", route_prefix=None) for g in (0, 1)]
        actors = [ray.remote(num_cpus=0.25)(GenoraySearcher).remote(str(root), g, 3600) for g in (0, 1)]

        async def timed(call_all, n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                await call_all()
                out.append(time.perf_counter() - t0)
            return out

        async def one_handle():
            return await handles[0].search.remote(xv, 6, version)

        async def both_handles():
            return await gather_async(dict(enumerate(handles)), version, xv, 6, 10, 0)

        async def one_actor():
            return await actors[0].search.remote(xv, 6, version)

        async def both_actors():
            return await asyncio.gather(*(a.search.remote(xv, 6, version) for a in actors))

        async def nothing():
            return None

        async def run_all():
            for name, fn in [("Ray call, 1 group, Serve DeploymentHandle", one_handle),
                             ("Ray calls, 2 groups concurrently, DeploymentHandle (the scatter)", both_handles),
                             ("Ray call, 1 group, plain actor handle", one_actor),
                             ("Ray calls, 2 groups concurrently, plain actor handles", both_actors)]:
                await timed(fn, 20)  # warm
                rows.append((name, med_ms(await timed(fn, args.n))))

        loop = asyncio.new_event_loop()
        th = threading.Thread(target=loop.run_forever, daemon=True)
        th.start()
        asyncio.run_coroutine_threadsafe(run_all(), loop).result()
        t = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            asyncio.run_coroutine_threadsafe(nothing(), loop).result()
            t.append(time.perf_counter() - t0)
        rows.append(("thread -> replica loop hop (run_coroutine_threadsafe)", med_ms(t)))
        loop.call_soon_threadsafe(loop.stop)
    finally:
        serve.shutdown()
        ray.shutdown()
    for name, ms in rows:
        print(f"{name:<72} {ms:8.3f} ms")


def holder_batch(holder):
    """What a replica's batch runs over (the groups' search bound to the holder's version)."""
    from genoray.serving.scatter import _Batch

    return _Batch(holder)


if __name__ == "__main__":
    main()
