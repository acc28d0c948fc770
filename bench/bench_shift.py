"""Shift detector calibration and power on the shared data (k-mer embeddings).

* False-positive rate: for each of ``--seeds`` seeds, split one dataset's rows randomly in two
  halves and test one against the other (alpha = 0.05 per test, and the combined
  Bonferroni decision). Expected about 5% per test.
* Power: test pairs of different datasets (p-values and AUC).

    python bench/bench_shift.py [--seeds 20]
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq
from _common import SHARED

PAIRS = [("ecoli_promoter_ipromoter2l", "human_tata_promoter_gue"), ("ienhancer2l_layer1", "human_tata_promoter_gue"),
         ("ecoli_promoter_ipromoter2l", "ecoli_sigma_ipromoter2l")]
NULL = ["ecoli_promoter_ipromoter2l", "dmel_6ma_idnams"]


def embed(name: str) -> np.ndarray:
    from genoray.encoders.kmer import KmerEncoder

    seqs = pq.read_table(SHARED / f"{name}.parquet", columns=["sequence"])["sequence"].to_pylist()
    return KmerEncoder().embed(seqs)


def main() -> None:
    from genoray.shift import ShiftConfig, ShiftDetector

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--max-samples", type=int, default=500)
    args = ap.parse_args()
    x = {n: embed(n) for n in set(NULL) | {d for p in PAIRS for d in p}}
    print(f"null: random halves of one dataset, {args.seeds} seeds, alpha 0.05, {args.max_samples} rows per side")
    print(f"{'dataset':<28} {'MMD FPR':>8} {'C2ST FPR':>9} {'OOD FPR':>8} {'any (Bonferroni)':>17}")
    for name in NULL:
        flags = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 + seed)
            perm = rng.permutation(len(x[name]))
            a, b = x[name][perm[: len(perm) // 2]], x[name][perm[len(perm) // 2:]]
            rep = ShiftDetector(ShiftConfig(max_samples=args.max_samples, seed=seed)).fit(a).score(b)
            flags.append((rep.mmd_p_value < 0.05, rep.c2st_p_value < 0.05, rep.ood_p_value < 0.05, rep.is_shift))
        f = np.mean(flags, axis=0)
        print(f"{name:<28} {f[0]:>8.2f} {f[1]:>9.2f} {f[2]:>8.2f} {f[3]:>17.2f}")
    print("\ndifferent datasets (seed 0):")
    print(f"{'reference -> new':<58} {'MMD p':>8} {'C2ST AUC':>9} {'C2ST p':>8} {'OOD frac':>9} {'shift':>6}")
    for a, b in PAIRS:
        rep = ShiftDetector(ShiftConfig(max_samples=args.max_samples)).fit(x[a]).score(x[b])
        print(f"{a + ' -> ' + b:<58} {rep.mmd_p_value:>8.4f} {rep.c2st_auc:>9.3f} {rep.c2st_p_value:>8.1e} "
              f"{rep.ood_fraction:>9.3f} {str(rep.is_shift):>6}")


if __name__ == "__main__":
    main()
