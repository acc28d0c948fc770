"""Peak private memory of the one-process index build (``build_index(use_ray=False)``), per stage.

Writes (or reuses) ``bench_growth``'s clustered synthetic store of ``N`` x 64 rows in ``WORK/store``,
builds ``WORK/idx`` in this process and polls ``/proc/self/smaps_rollup`` every 50 ms: ``Anonymous``
(private anonymous pages: heap, FAISS and Arrow buffers; not the page cache of files this process
maps or reads) overall and per stage (scan, train, add, merge, exact, tune: the stage function
running when the sample was taken), and ``Rss`` (which also counts the resident pages of mapped
files, e.g. the index the recall tuning maps), beside ``ru_maxrss``. Prints one JSON line.

    python bench/bench_index_memory.py WORK N [--ray]
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MB = 2**20
STAGES = ("scan_part", "train_template", "add_part", "merge_shard", "exact_topk", "tune_index")


def rollup() -> dict[str, int]:
    """``/proc/self/smaps_rollup`` in bytes."""
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if len(p) >= 2 and p[1].isdigit():
                out[p[0].rstrip(":")] = int(p[1]) * 1024
    return out


def main() -> None:
    """Build and report (see the module docstring)."""
    import bench_growth as bg

    work, n, use_ray = Path(sys.argv[1]), int(sys.argv[2]), "--ray" in sys.argv
    if not (work / "store" / "store.json").exists():
        work.mkdir(parents=True, exist_ok=True)
        bg.stage_store(work, n, "clustered")
    shutil.rmtree(work / "idx", ignore_errors=True)
    import genoray.index.build as build
    from genoray.config import IndexConfig

    stage, peak, phase, done = ["start"], {"anon": 0, "rss": 0}, {}, threading.Event()

    def poll() -> None:
        while not done.is_set():
            r = rollup()
            peak["anon"], peak["rss"] = max(peak["anon"], r.get("Anonymous", 0)), max(peak["rss"], r.get("Rss", 0))
            phase[stage[0]] = max(phase.get(stage[0], 0), r.get("Anonymous", 0))
            time.sleep(0.05)

    def wrap(name: str) -> None:
        fn = getattr(build, name)

        def marked(*a, **k):
            stage[0] = name
            return fn(*a, **k)
        setattr(build, name, marked)

    for name in STAGES:  # build_index calls them through its module's names (in this process without Ray)
        wrap(name)
    threading.Thread(target=poll, daemon=True).start()
    if use_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * MB)
    t0 = time.perf_counter()
    rep = build.build_index(work / "store", work / "idx", IndexConfig(split="train"), use_ray=use_ray)
    wall = time.perf_counter() - t0
    done.set()
    print(json.dumps({"n": n, "ray": use_ray, "wall_s": round(wall, 1),
                      "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "peak_private_mb": round(peak["anon"] / MB), "peak_rss_polled_mb": round(peak["rss"] / MB),
                      "stage_private_mb": {k: round(v / MB) for k, v in phase.items()},
                      "shards": rep.shards, "factory": rep.factory, "recall": rep.recall_at_10,
                      "search_params": rep.search_params, "peak_worker_rss_mb": round(rep.peak_worker_rss_mb)}))


if __name__ == "__main__":
    main()
