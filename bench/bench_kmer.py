"""KmerEncoder throughput vs scikit-learn CountVectorizer (char n-grams) on the same sequences.

Baseline: ``CountVectorizer(analyzer="char", ngram_range=(k, k))`` for each k of the spectrum
(the k-mer counting alone, no GC/z-curve, no normalisation). Ours computes the whole vector.
Prints median of 3 runs and ratios measured in the same run; also the position-aware encoder.

    python bench/bench_kmer.py [--n 100000]
"""

from __future__ import annotations

import argparse

from _common import corpus, median_time


def main() -> None:
    from sklearn.feature_extraction.text import CountVectorizer

    from genoray.config import KmerConfig, PositionConfig
    from genoray.encoders.kmer import KmerEncoder

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args()
    seqs = corpus(args.n)
    ks = (1, 2, 3, 4)

    def sklearn_counts():
        for k in ks:
            CountVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False).fit_transform(seqs)

    def ours(enc):
        def run():
            for i in range(0, len(seqs), args.batch):
                enc.embed(seqs[i : i + args.batch])
        return run

    free = KmerEncoder(KmerConfig(ks=ks))
    pos = KmerEncoder(KmerConfig(ks=ks, position=PositionConfig())).fit(seqs[:1000])
    t_base = median_time(sklearn_counts)
    t_free = median_time(ours(free))
    t_pos = median_time(ours(pos))
    print(f"{args.n} sequences of 200-300 bp, k = {ks}; median of 3 runs")
    print(f"{'method':<42} {'seconds':>8} {'seq/s':>10} {'x CountVectorizer':>18}")
    for name, t in (("sklearn CountVectorizer (counts only)", t_base),
                    (f"KmerEncoder position-free (dim {free.dim})", t_free),
                    (f"KmerEncoder position-aware (dim {pos.dim})", t_pos)):
        print(f"{name:<42} {t:>8.2f} {args.n / t:>10.0f} {t_base / t:>18.1f}")
    print(f"position-aware / position-free time: {t_pos / t_free:.2f}x")


if __name__ == "__main__":
    main()
