"""One IVF shard merged from 250k-row partitions: FAISS ``merge_from`` (the old in-memory merge)
against :func:`genoray.index.ivf_merge.write_merged_ivf` (list by list), time and private memory.

``make`` writes PARTS partition files of 250k clustered 64-dim rows (IVF4096,SQ8, as a 1M-row build
trains) into WORK; ``old`` / ``new`` merge them in a fresh process and print wall and CPU seconds,
private anonymous memory (``/proc/self/smaps_rollup``) before and after, and ``ru_maxrss``. The two
output files are byte-identical (``cmp WORK/old.faiss WORK/new.faiss``).

    python bench/bench_merge.py make|old|new WORK PARTS
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from genoray.index.core import write_without_quantizer
from genoray.index.ivf_merge import write_merged_ivf

ROWS, D = 250_000, 64


def private_mb() -> float:
    """Private anonymous memory of this process, MB."""
    with open("/proc/self/smaps_rollup") as f:
        return next(int(x.split()[1]) / 1024 for x in f if x.startswith("Anonymous:"))


def make(w: Path, files: list[Path]) -> None:
    """The trained template and the partition files."""
    w.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    c = rng.normal(size=(256, D)).astype("float32")

    def rows(n: int) -> np.ndarray:
        v = c[rng.integers(0, 256, n)] + 0.3 * rng.normal(size=(n, D)).astype("float32")
        faiss.normalize_L2(v)
        return v

    t = faiss.index_factory(D, "IVF4096,SQ8", faiss.METRIC_INNER_PRODUCT)
    t.train(rows(262_144))
    (w / "template.faiss").write_bytes(faiss.serialize_index(t).tobytes())
    for i, f in enumerate(files):
        ix = faiss.deserialize_index(np.frombuffer((w / "template.faiss").read_bytes(), np.uint8))
        ix.add_with_ids(rows(ROWS), np.arange(i * ROWS, (i + 1) * ROWS))
        faiss.write_index(ix, str(f))


def main() -> None:
    """See the module docstring."""
    mode, w, parts = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    files = [w / f"p{i}.faiss" for i in range(parts)]
    if mode == "make":
        make(w, files)
        return
    blob = np.frombuffer((w / "template.faiss").read_bytes(), np.uint8)
    before, t0, c0 = private_mb(), time.perf_counter(), time.process_time()
    if mode == "old":
        ix = faiss.deserialize_index(blob)
        for f in files:
            ix.merge_from(faiss.read_index(str(f)), 0)
        after = private_mb()
        write_without_quantizer(ix, w / "old.faiss")
    else:
        write_merged_ivf(blob, files, w / "new.faiss")
        after = private_mb()
    print(json.dumps({"mode": mode, "rows": parts * ROWS, "wall_s": round(time.perf_counter() - t0, 2),
                      "cpu_s": round(time.process_time() - c0, 2), "private_before_mb": round(before),
                      "private_after_merge_mb": round(after),
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
