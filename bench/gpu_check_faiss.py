"""FAISS on the GPU, checked (step 4 of bench/gpu_check.sh; exits non-zero without a GPU).

1. ``faiss.get_num_gpus() > 0`` in a FAISS build with GPU support (faiss-gpu, not faiss-cpu).
2. An ``index_cpu_to_gpu`` round trip: an exact inner-product index of ``--flat-n`` random
   vectors built on the CPU, moved to GPU 0 (the copy timed), searched there and on the CPU
   (both timed; the neighbours must agree), moved back with ``index_gpu_to_cpu``.
3. genoray's own IVF build (``build_index``) over a k-mer store of ``--index-n`` random
   sequences: ``IndexReport.gpu_used`` and the manifest's ``gpu_trained`` must be true.

    python bench/gpu_check_faiss.py --work DIR [--flat-n 500000] [--index-n 300000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def num_gpus() -> int:
    """GPUs FAISS can use; exits with the reason when there are none."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        sys.exit(f"FAISS {faiss.__version__} has no GPU support: faiss-cpu is installed, not faiss-gpu")
    n = int(faiss.get_num_gpus())
    if n == 0:
        sys.exit(f"faiss-gpu {faiss.__version__} sees no GPU (faiss.get_num_gpus() == 0): driver or CUDA runtime?")
    return n


def flat_round_trip(n: int, d: int = 128, queries: int = 2_000, k: int = 10) -> None:
    """Build on the CPU, copy to the GPU, search both, copy back; prints timings and agreement."""
    import faiss

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xq = rng.standard_normal((queries, d), dtype=np.float32)
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb)
    t = time.perf_counter()
    _, i_cpu = cpu.search(xq, k)
    cpu_s = time.perf_counter() - t
    res = faiss.StandardGpuResources()
    t = time.perf_counter()
    gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
    to_gpu_s = time.perf_counter() - t
    if not type(gpu).__name__.startswith("Gpu"):
        sys.exit(f"index_cpu_to_gpu returned a {type(gpu).__name__}, not a GPU index")
    gpu.search(xq[:16], k)  # first call pays for kernels and scratch memory
    t = time.perf_counter()
    _, i_gpu = gpu.search(xq, k)
    gpu_s = time.perf_counter() - t
    t = time.perf_counter()
    back = faiss.index_gpu_to_cpu(gpu)
    to_cpu_s = time.perf_counter() - t
    agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(i_cpu, i_gpu)]))
    print(f"flat {n} x {d} on {type(gpu).__name__}: copy to GPU {to_gpu_s:.2f} s, back {to_cpu_s:.2f} s; "
          f"{queries} queries k={k}: CPU {cpu_s:.3f} s ({queries / cpu_s:.0f} q/s), GPU {gpu_s:.4f} s "
          f"({queries / gpu_s:.0f} q/s, x{cpu_s / gpu_s:.1f}); neighbours agree {agree:.4f}", flush=True)
    if back.ntotal != n or agree < 0.99:
        sys.exit(f"GPU round trip wrong: ntotal back {back.ntotal} (want {n}), neighbour agreement {agree:.4f} < 0.99")


def genoray_build(work: Path, n: int, length: int = 120) -> dict:
    """genoray's IVF build on a k-mer store of ``n`` random sequences; returns what it reported."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genoray.config import IndexConfig, KmerConfig
    from genoray.embedding.job import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.infra.artifacts import read_json

    rng = np.random.default_rng(0)
    codes = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, size=(n, length))]
    seqs = [row.tobytes().decode() for row in codes]
    src = work / "synthetic.parquet"
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(n)], "sequence": seqs, "split": ["train"] * n}), src,
                   row_group_size=50_000)
    embed_sequences(src, work / "store", KmerEncoder(KmerConfig()), use_ray=False)
    nlist = 1024 if n >= 100_000 else 64
    t = time.perf_counter()
    rep = build_index(work / "store", work / "index", IndexConfig(index_type=f"IVF{nlist},Flat", target_recall=0.95))
    seconds = time.perf_counter() - t
    manifest = read_json(work / "index" / "manifest.json")
    print(f"genoray build_index {rep.factory}: {rep.ntotal} vectors x {rep.dim}, recall@10 {rep.recall_at_10:.3f} "
          f"{rep.search_params}, {seconds:.1f} s ({rep.ntotal / seconds:.0f} vectors/s), gpu_used={rep.gpu_used}, "
          f"manifest gpu_trained={manifest.get('gpu_trained')}", flush=True)
    return {"gpu_used": rep.gpu_used, "gpu_trained": manifest.get("gpu_trained")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, type=Path, help="empty directory for the store and index")
    ap.add_argument("--flat-n", type=int, default=500_000)
    ap.add_argument("--index-n", type=int, default=300_000)
    a = ap.parse_args()
    import faiss

    print(f"faiss {faiss.__version__}: {num_gpus()} GPU(s)", flush=True)
    flat_round_trip(a.flat_n)
    built = genoray_build(a.work, a.index_n)
    if not (built["gpu_used"] and built["gpu_trained"]):
        sys.exit(f"genoray's build did not train on the GPU: {built}")
    print("OK: FAISS ran on the GPU (round trip, and genoray's IVF training)")


if __name__ == "__main__":
    main()
