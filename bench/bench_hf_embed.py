"""Transformers embedding throughput: the overlapped pipeline vs the old per-actor loop.

HyenaDNA-tiny (a directory made by ``genoray convert-weights``; see the README, "A real DNA
model") on N sequences of mixed length (default 50-2,000 bp, sampled and mutated from the
shared data), written to 4 Parquet files (4 units), embedded through ``embed_sequences``
in this process (the code each Ray actor runs, without Ray's scheduling noise):

* ``loop`` (before): read+clean a batch, then tokenize, then forward, one after the other;
  forward batches of ``--batch-size`` tiles sorted by length within each 1,024-record call.
* ``overlapped`` (now): reading/cleaning runs ``prefetch_batches=2`` ahead on a thread, the
  next forward batch is tokenized on a thread during the current one, and forward batches are
  formed by a token budget (``--tokens-per-batch``) over length-sorted tiles.

Each repeat runs both back to back (order alternating); prints medians of seq/s and tokens/s
(real bases), the ratio, the per-pair ratios, and padding waste (padded / real positions) for
unsorted batches, the old length-sorted batches and token-budget batches, counted exactly
from the tile lengths. Vectors of the two runs are compared (cosine >= 0.9999).

    python bench/bench_hf_embed.py --model hyenadna-tiny [--n 20000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import corpus


def padding_report(lengths: list[int], tile_nt: int, records_per_call: int, batch_size: int, budget: int) -> dict:
    from genoray.encoders.hf import padding_waste, plan_batches

    out = {"unsorted": 0.0, "sorted_per_call": 0.0, "token_budget": 0.0}
    real = 0
    for start in range(0, len(lengths), records_per_call):
        call = lengths[start : start + records_per_call]
        tiles = np.array([min(n, tile_nt) for n in call for _ in range(max(1, -(-n // tile_nt)))])  # approx. tiles
        r = tiles.sum()
        real += r
        unsorted = [np.arange(i, min(i + batch_size, len(tiles))) for i in range(0, len(tiles), batch_size)]
        out["unsorted"] += padding_waste(tiles, unsorted) * r
        out["sorted_per_call"] += padding_waste(tiles, plan_batches(tiles, batch_size)) * r
        out["token_budget"] += padding_waste(tiles, plan_batches(tiles, batch_size, budget)) * r
    return {k: round(v / real, 4) for k, v in out.items()}


def run(files, model: str, mode: str, batch_size: int, budget: int, work: Path):
    from genoray.config import EmbedConfig, HFConfig
    from genoray.embed import embed_sequences
    from genoray.encoders.hf import HFEncoder
    from genoray.store import EmbeddingStore

    overlapped = mode == "overlapped"
    enc = HFEncoder(HFConfig(model=model, trust_remote_code=True, batch_size=batch_size,
                             tokens_per_batch=budget if overlapped else 0))
    enc.tokenize_ahead = overlapped
    out = work / mode
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rep = embed_sequences(files, out, enc, embed_cfg=EmbedConfig(prefetch_batches=2 if overlapped else 0),
                          use_ray=False)
    seconds = time.perf_counter() - t0
    emb = EmbeddingStore(out).load(None)
    order = np.argsort(emb.ids)
    return seconds, rep.written, emb.vectors[order]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="converted HyenaDNA-tiny directory")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tokens-per-batch", type=int, default=32_768)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    import torch

    seqs = corpus(a.n, a.min_len, a.max_len, seed=0)
    bases = sum(map(len, seqs))
    work = Path(tempfile.mkdtemp(prefix="bench-hf-"))
    files = []
    for i in range(4):
        part = seqs[i::4]
        t = pa.table({"id": [f"f{i}_{j}" for j in range(len(part))], "sequence": part})
        pq.write_table(t, work / f"part{i}.parquet", row_group_size=1024)
        files.append(work / f"part{i}.parquet")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{a.n} sequences, {a.min_len}-{a.max_len} bp, {bases} bases; device {device}; torch threads "
          f"{torch.get_num_threads()}; batch {a.batch_size}, token budget {a.tokens_per_batch}")
    print("padding waste (padded/real):",
          padding_report([len(s) for s in seqs], 1024, 1024, a.batch_size, a.tokens_per_batch))
    times: dict[str, list[float]] = {"loop": [], "overlapped": []}
    ratios, vecs = [], {}
    for r in range(a.repeats):
        order = ("loop", "overlapped") if r % 2 == 0 else ("overlapped", "loop")
        pair = {}
        for mode in order:
            seconds, written, v = run(files, a.model, mode, a.batch_size, a.tokens_per_batch, work)
            assert written == a.n
            pair[mode], vecs[mode] = seconds, v
            times[mode].append(seconds)
            print(f"  repeat {r} {mode:<10} {seconds:7.1f} s  {a.n / seconds:8.1f} seq/s  {bases / seconds:10.0f} bases/s")
        ratios.append(pair["loop"] / pair["overlapped"])
    cos = (vecs["loop"] * vecs["overlapped"]).sum(1) / (
        np.linalg.norm(vecs["loop"], axis=1) * np.linalg.norm(vecs["overlapped"], axis=1))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median loop {a.n / med['loop']:.1f} seq/s ({bases / med['loop']:.0f} bases/s); overlapped "
          f"{a.n / med['overlapped']:.1f} seq/s ({bases / med['overlapped']:.0f} bases/s); "
          f"speed-up x{med['loop'] / med['overlapped']:.2f} (pairs: {[round(x, 2) for x in ratios]}); "
          f"min cosine loop vs overlapped {cos.min():.6f}")
    assert cos.min() >= 0.9999
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
