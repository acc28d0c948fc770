"""Embedding job throughput: Ray Data actor pool vs a single-process loop over the same input.

Writes N sequences (200-300 bp, sampled and mutated from the shared data) into 16 Parquet
files, then embeds them with the k-mer encoder through ``embed_sequences`` twice per repeat:
``use_ray=False`` (the single-process loop: the same read -> clean -> embed -> write code, one
unit after another) and ``use_ray=True`` (local Ray, actor pool). Prints medians and the ratio,
the per-pair ratios (each pair run back to back, order alternating, because this
machine's speed drifts between runs), plus the driver's peak RSS growth during the Ray runs for N/4 and N records (it should not
grow with the corpus).

    python bench/bench_embed.py [--n 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _common import corpus


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRSS:
    def __enter__(self):
        self.base, self.peak, self._stop = rss_mb(), rss_mb(), False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def write_corpus(seqs: list[str], d: Path, n_files: int = 16) -> list[Path]:
    files = []
    per = -(-len(seqs) // n_files)
    for f in range(n_files):
        chunk = seqs[f * per : (f + 1) * per]
        p = d / f"part{f:02d}.parquet"
        pq.write_table(pa.table({"id": [f"f{f}_{i}" for i in range(len(chunk))], "sequence": chunk}), p,
                       row_group_size=len(chunk) or 1)
        files.append(p)
    return files


def main() -> None:
    from genoray.embedding.job import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.infra.runtime import init_ray

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        files = write_corpus(corpus(args.n), work)
        (work / "small").mkdir()
        small = write_corpus(corpus(args.n // 4, seed=1), work / "small")
        t0 = time.perf_counter()
        init_ray()
        t_init = time.perf_counter() - t0
        loop, ray_t = [], []
        for r in range(args.repeats):  # pairs, in alternating order: this VM's speed drifts
            order = ((False, loop), (True, ray_t)) if r % 2 == 0 else ((True, ray_t), (False, loop))
            for mode, sink in order:
                out = work / f"out-{mode}-{r}"
                t0 = time.perf_counter()
                rep = embed_sequences(files, out, KmerEncoder(), use_ray=mode)
                sink.append(time.perf_counter() - t0)
                assert rep.written == args.n and rep.status == "complete"
                shutil.rmtree(out)
        mem = {}
        for name, fs, n in (("N/4", small, args.n // 4), ("N", files, args.n)):
            out = work / f"mem-{name.replace('/', '')}"
            with PeakRSS() as p:
                embed_sequences(fs, out, KmerEncoder(), use_ray=True)
            mem[name] = (n, p.peak - p.base)
            shutil.rmtree(out)
        m_loop, m_ray = statistics.median(loop), statistics.median(ray_t)
        pair = sorted(a / b for a, b in zip(loop, ray_t))
        print(f"{args.n} sequences (200-300 bp) in 16 Parquet files, k-mer encoder (dim 350); "
              f"median of {args.repeats}; {os.cpu_count()} CPUs")
        print(f"{'mode':<34} {'seconds':>8} {'seq/s':>9} {'x loop':>7}")
        print(f"{'single-process loop':<34} {m_loop:>8.2f} {args.n / m_loop:>9.0f} {1.0:>7.2f}")
        print(f"{'Ray Data actor pool':<34} {m_ray:>8.2f} {args.n / m_ray:>9.0f} {m_loop / m_ray:>7.2f}")
        print(f"per-pair ratios loop/Ray: {', '.join(f'{x:.2f}' for x in pair)} (median {statistics.median(pair):.2f})")
        print(f"(ray.init once: {t_init:.1f} s, not included)")
        for name, (n, grow) in mem.items():
            print(f"driver RSS growth during the Ray job, {name} = {n} records: {grow:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
