"""Shared helpers for benchmarks: synthetic corpora sampled (and mutated) from the shared data."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def corpus(n: int, min_len: int = 200, max_len: int = 300, seed: int = 0) -> list[str]:
    """``n`` sequences of ``min_len..max_len`` bp built by concatenating and point-mutating
    real sequences from the shared data (falls back to random DNA when it is absent)."""
    rng = np.random.default_rng(seed)
    pool: list[str] = []
    if SHARED.is_dir():
        import pyarrow.parquet as pq

        for f in sorted(SHARED.glob("*.parquet")):
            pool += pq.read_table(f, columns=["sequence"])["sequence"].to_pylist()
    big = "".join(pool) if pool else "".join(rng.choice(list("ACGT"), size=10_000_000))
    big = big.replace("N", "A")
    arr = np.frombuffer(big.encode(), dtype=np.uint8).copy()
    lengths = rng.integers(min_len, max_len + 1, size=n)
    starts = rng.integers(0, len(arr) - max_len, size=n)
    out = []
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    for s, length in zip(starts, lengths):
        seq = arr[s : s + length].copy()
        mut = rng.random(length) < 0.02
        seq[mut] = bases[rng.integers(0, 4, size=mut.sum())]
        out.append(seq.tobytes().decode())
    return out


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
