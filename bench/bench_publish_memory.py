"""Publish's load check: the publishing process's memory with the index read vs memory-mapped.

``genoray.pipeline.write_bundle`` stages a version (:func:`genoray.bundle.write_version`), then,
before sealing it, loads it as a replica would to refuse what a replica could not load. This
loaded the index into the process (``VectorIndex.load(mmap=False)``: O(index) anonymous memory);
it now maps it (``mmap=True``, as ``serve --mmap`` does). A synthetic store has no encoder a
:class:`~genoray.predict.Predictor` could rebuild, so the check here is the index part of it, the
part that grows with n: ``write_version(prepare=...)`` whose ``prepare`` loads the staged index
exactly as ``Predictor.load`` does (``VectorIndex.load(stage/index, mmap=...)``, checksums
verified). Each mode runs in its own subprocess; reported: peak RSS (``VmHWM``), and the
anonymous (private) and file-backed resident memory while the loaded index is held.

    nice python bench/bench_publish_memory.py [--n 500000] [--dim 64] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
from genoray.bundle import write_version
from genoray.index import VectorIndex

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024
    return out

root, index, head, mmap = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "mmap"
held = {}

def prepare(stage):
    ix = VectorIndex.load(Path(stage) / "index", mmap=mmap)
    held.update(status(), ntotal=ix.ntotal)

t = time.perf_counter()
write_version(root, index, head, prepare=prepare)
end = status()
print(json.dumps({"mode": sys.argv[4], "seconds": round(time.perf_counter() - t, 2), "peak_rss_mb": end["VmHWM"],
                  "held_anon_mb": held["RssAnon"], "held_file_mb": held["RssFile"], "ntotal": held["ntotal"]}))
"""


def main() -> None:
    """Build the store, index and a head once, then run the two publish modes; print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    from genoray.config import HeadConfig, IndexConfig
    from genoray.embedding.synthetic import write_synthetic_store
    from genoray.index import build_index
    from genoray.pipeline.train import train_head

    w = a.work or Path(tempfile.mkdtemp(prefix="bench-publish-"))
    t = time.perf_counter()
    store = write_synthetic_store(w / "store", a.n, a.dim, parts=8)
    rep = build_index(store, w / "index", IndexConfig(split=None))
    small = write_synthetic_store(w / "small", 5000, a.dim, parts=1, test_fraction=0.1)  # the head: same dim
    build_index(small, w / "small-index", IndexConfig(index_type="Flat"))
    train_head(small, w / "small-index", w / "head", HeadConfig(k=5, C=1.0))
    index_mb = sum(f.stat().st_size for f in (w / "index").iterdir() if f.is_file()) / 2**20
    print(f"{a.n:,} x {a.dim}: {rep.factory}, {rep.shards} shard(s), index files {index_mb:.0f} MB; "
          f"set-up {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for mode in ("read", "mmap"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(w / f"root-{mode}"), str(w / "index"), str(w / "head"),
                              mode], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'load check':<12}{'peak RSS MB':>13}{'anon MB held':>14}{'file MB held':>14}{'seconds':>9}")
    for r in rows:
        print(f"{r['mode']:<12}{r['peak_rss_mb']:>13.0f}{r['held_anon_mb']:>14.0f}{r['held_file_mb']:>14.0f}"
              f"{r['seconds']:>9.1f}")
    print(json.dumps({"n": a.n, "dim": a.dim, "factory": rep.factory, "index_mb": round(index_mb, 1), "runs": rows}))


if __name__ == "__main__":
    main()
