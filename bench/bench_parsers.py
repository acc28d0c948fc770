"""FASTA/FASTQ parser choice: dnaio (used by genoray) vs Biopython vs pyfastx on 100k records.

Prints the median of 3 runs and the ratio against Biopython measured in the same run, for
plain and gzipped FASTA and FASTQ. Also times genoray's full reader (parse + clean + Arrow).

    pip install -e ".[cpu,bench]"; python bench/bench_parsers.py [--n 100000]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
from pathlib import Path

from _common import corpus, median_time


def write_files(seqs: list[str], d: Path) -> dict[str, Path]:
    fa, fq = d / "c.fa", d / "c.fq"
    with open(fa, "w") as f:
        for i, s in enumerate(seqs):
            f.write(f">r{i} label=x\n")
            for j in range(0, len(s), 80):
                f.write(s[j : j + 80] + "\n")
    with open(fq, "w") as f:
        for i, s in enumerate(seqs):
            f.write(f"@r{i}\n{s}\n+\n{'I' * len(s)}\n")
    out = {"fasta": fa, "fastq": fq}
    for name, p in list(out.items()):
        gz = p.with_suffix(p.suffix + ".gz")
        gz.write_bytes(gzip.compress(p.read_bytes(), compresslevel=1))
        out[name + ".gz"] = gz
    return out


def count_dnaio(p: Path) -> int:
    import dnaio

    with dnaio.open(p) as r:
        return sum(len(rec.sequence) for rec in r)


def count_biopython(p: Path) -> int:
    from Bio import SeqIO

    fmt = "fastq" if ".fq" in p.name else "fasta"
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt") as h:
        return sum(len(rec.seq) for rec in SeqIO.parse(h, fmt))


def count_pyfastx(p: Path) -> int:
    import pyfastx

    if ".fq" in p.name:
        return sum(len(seq) for _, seq, _ in pyfastx.Fastq(str(p), build_index=False))
    return sum(len(seq) for _, seq in pyfastx.Fasta(str(p), build_index=False))


def count_genoray(p: Path) -> int:
    from genoray.config import CleanPolicy, ReadConfig
    from genoray.sequences import iter_sequences

    cfg = ReadConfig(clean=CleanPolicy(max_length=10**9))
    return sum(b.num_rows for b in iter_sequences(p, cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    seqs = corpus(args.n)
    with tempfile.TemporaryDirectory() as d:
        files = write_files(seqs, Path(d))
        print(f"{args.n} records, 200-300 bp; median of 3 runs; ratio = Biopython time / parser time")
        print(f"{'file':<10} {'parser':<10} {'seconds':>8} {'x Biopython':>12}")
        for name, p in files.items():
            base = median_time(lambda: count_biopython(p))
            expected = count_dnaio(p)
            for parser, fn in (("biopython", count_biopython), ("dnaio", count_dnaio), ("pyfastx", count_pyfastx),
                               ("genoray", count_genoray)):
                if parser != "genoray":
                    assert fn(p) == expected, parser
                t = base if parser == "biopython" else median_time(lambda: fn(p))
                print(f"{name:<10} {parser:<10} {t:>8.3f} {base / t:>12.1f}")


if __name__ == "__main__":
    main()
