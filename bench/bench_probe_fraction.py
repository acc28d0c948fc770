"""Is the recall-tuned ``nprobe / nlist`` scale-free (docs/capacity.md)? The build's tuning walk
(the smallest :data:`genoray.index.stages.NPROBE_STEPS` value with recall@10 >= 0.95 against
exact search, 500 held-out queries, ``IVF<nlist>,SQ8``, inner product on L2-normalised vectors,
64 training points per list) re-run with FAISS on bench_growth's clustered / unclustered vectors
and on :mod:`genoray.embedding.synthetic`'s rank-32 / rank-64 vectors, at 62.5k / 125k / 250k
rows with 512 / 1,024 / 2,048 lists (same rows per list) and at 250k on 1,024 lists.

    OMP_NUM_THREADS=1 python bench/bench_probe_fraction.py [growth-unclustered,growth-clustered,...]

One JSON line per (generator, size). Results of 2026-12-05: bench/results/probe-fraction-2026-12-05.jsonl.
"""
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_growth import vectors  # noqa: E402

from genoray.index.stages import NPROBE_STEPS  # noqa: E402


def synth(rows, seed, rank):
    """``rows`` vectors of genoray/embedding/synthetic.py's kind (rank-``rank`` signal + 0.3 noise)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).standard_normal((rank, 64)).astype(np.float32)
    x = rng.standard_normal((rows, rank)).astype(np.float32) @ basis
    return x + 0.3 * rng.standard_normal((rows, 64)).astype(np.float32)


gens = {"growth-clustered": lambda r, s: vectors("clustered", r, s)[0],
        "growth-unclustered": lambda r, s: vectors("unclustered", r, s)[0],
        "synthetic-rank32": lambda r, s: synth(r, s, 32), "synthetic-rank64": lambda r, s: synth(r, s, 64)}
configs = [(62_500, 512), (125_000, 1024), (250_000, 2048), (250_000, 1024)]
for name in (sys.argv[1] if len(sys.argv) > 1 else ",".join(gens)).split(","):
    for n, nlist in configs:
        t0 = time.time()
        x = np.ascontiguousarray(gens[name](n, 7))
        q = np.ascontiguousarray(gens[name](500, 99))
        faiss.normalize_L2(x)
        faiss.normalize_L2(q)
        _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
        idx = faiss.index_factory(64, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        idx.train(x[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
        idx.add(x)
        for p in [s for s in NPROBE_STEPS if s <= nlist]:
            idx.nprobe = p
            found = idx.search(q, 10)[1]
            rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
            if rec >= 0.95:
                break
        print(json.dumps({"gen": name, "n": n, "nlist": nlist, "nprobe": p, "fraction": p / nlist,
                          "recall": round(float(rec), 3), "s": round(time.time() - t0, 1)}), flush=True)
