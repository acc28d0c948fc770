"""Transformers embedding throughput: the overlapped pipeline vs the old per-actor loop.

HyenaDNA-tiny (a directory made by ``genoray convert-weights``; see docs/embedding.md, "A real DNA
model") on N sequences of mixed length (default 50-2,000 bp, sampled and mutated from the
shared data), written to 4 Parquet files (4 units), embedded through ``embed_sequences``
in this process (the code each Ray actor runs, without Ray's scheduling noise):

* ``loop`` (before): read+clean a batch, then tokenize, then forward, one after the other;
  forward batches of ``--batch-size`` tiles sorted by length within each 1,024-record call.
* ``budget``: the loop with token-budget batches (isolates the batching from the overlap).
* ``prefetch`` / ``tokenize``: token-budget batches with only one of the two overlaps below
  (reading ahead, or tokenizing ahead), to tell which one costs or gains.
* ``overlapped`` (now): reading/cleaning runs ``prefetch_batches=2`` ahead on a thread, the
  next forward batch is tokenized on a thread during the current one, and forward batches are
  formed by a token budget (``--tokens-per-batch``) over length-sorted tiles.

``torch.set_num_threads(--threads)`` is fixed once, the same for every variant. Repeats run
the variants interleaved, the order reversed every other repeat (A B, B A, A B, ...) so a load
drift on a shared machine hits both alike; the model is loaded before the clock starts.
Prints per run: wall seconds, seq/s, real tokens/s (tokens forwarded, overlap of tiles
included), process CPU seconds (all threads; of which the forward calls' own thread time) and
the padding actually forwarded (padded / real tokens, counted in the forward calls); then
medians, the per-repeat ratios (min-max) and the load average. On a CPU with one torch thread
the loop's forward share bounds what any overlap can gain (Amdahl), a number that does not
depend on how loaded the machine is; CPU-time ratios are less load-sensitive than wall ones. Padding waste of the batch plans is also counted on ``--padding-n``
sequences of the same distribution (default 20,000; no model run): unsorted batches, the
old length-sorted batches, token-budget batches. Vectors of the variants are compared
(cosine >= 0.9999 in float32 on a CPU; >= 0.999 in half precision on a GPU, where batches
of other shapes may take other kernels).

    python bench/bench_hf_embed.py --model DIR [--n 20000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import corpus

VARIANTS = ("loop", "budget", "prefetch", "tokenize", "overlapped")


def tile_lengths(lengths: list[int], tile_nt: int, overlap_nt: int) -> list[list[int]]:
    """Per sequence, the lengths of the tiles the encoder cuts it into (exact, see genoray.sequences.clean.tile)."""
    from genoray.sequences.clean import window_starts

    return [[n] if n <= tile_nt else [tile_nt] * len(window_starts(n, tile_nt, overlap_nt)) for n in lengths]


def padding_report(lengths: list[int], tile_nt: int, overlap_nt: int, records_per_call: int, batch_size: int,
                   budget: int) -> dict:
    """Padded / real positions (bases) of three batch plans, per ``records_per_call`` records."""
    from genoray.encoders.hf import padding_waste, plan_batches

    out = {"unsorted": 0.0, "sorted_per_call": 0.0, "token_budget": 0.0}
    per_seq = tile_lengths(lengths, tile_nt, overlap_nt)
    real = 0
    for start in range(0, len(per_seq), records_per_call):
        tiles = np.array([t for seq in per_seq[start : start + records_per_call] for t in seq])
        r = int(tiles.sum())
        real += r
        unsorted = [np.arange(i, min(i + batch_size, len(tiles))) for i in range(0, len(tiles), batch_size)]
        out["unsorted"] += padding_waste(tiles, unsorted) * r
        out["sorted_per_call"] += padding_waste(tiles, plan_batches(tiles, batch_size)) * r
        out["token_budget"] += padding_waste(tiles, plan_batches(tiles, batch_size, budget)) * r
    return {k: round(float(v) / real, 4) for k, v in out.items()}


def load_encoder(model: str, variant: str, batch_size: int, budget: int):
    """The encoder of one variant, with its forward calls counted (real and padded tokens)."""
    from genoray.config import HFConfig
    from genoray.encoders.hf import HFEncoder

    enc = HFEncoder(HFConfig(model=model, trust_remote_code=True, batch_size=batch_size,
                             tokens_per_batch=0 if variant == "loop" else budget))
    enc.tokenize_ahead = variant in ("overlapped", "tokenize")
    counts = {"real": 0, "padded": 0, "calls": 0, "forward_cpu": 0.0}
    forward = enc._run

    def counted(ids):
        counts["real"] += sum(map(len, ids))
        counts["padded"] += len(ids) * max(map(len, ids))
        counts["calls"] += 1
        c = time.thread_time()  # torch with one intra-op thread computes in this thread
        try:
            return forward(ids)
        finally:
            counts["forward_cpu"] += time.thread_time() - c

    enc._run = counted  # type: ignore[method-assign]
    return enc, counts


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return u.ru_utime + u.ru_stime


def run(files, model: str, variant: str, batch_size: int, budget: int, work: Path) -> dict:
    from genoray.config import EmbedConfig
    from genoray.embedding.job import embed_sequences
    from genoray.embedding.store import EmbeddingStore

    enc, counts = load_encoder(model, variant, batch_size, budget)
    out = work / variant
    shutil.rmtree(out, ignore_errors=True)
    c0, t0 = cpu_seconds(), time.perf_counter()
    rep = embed_sequences(files, out, enc, use_ray=False,
                          embed_cfg=EmbedConfig(prefetch_batches=2 if variant in ("overlapped", "prefetch") else 0))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    emb = EmbeddingStore(out).load(None)
    return {"seconds": seconds, "cpu": cpu, "written": rep.written, "vectors": emb.vectors[np.argsort(emb.ids)],
            **counts}


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="converted HyenaDNA-tiny directory")
    ap.add_argument("--n", type=int, default=20_000, help="sequences embedded per run")
    ap.add_argument("--padding-n", type=int, default=20_000, help="sequences for the padding-waste count")
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tokens-per-batch", type=int, default=32_768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, the same for every variant")
    ap.add_argument("--variants", default="loop,overlapped",
                    help=f"comma-separated, of {', '.join(VARIANTS)} (default: loop,overlapped)")
    a = ap.parse_args()
    variants = a.variants.split(",")
    if len(variants) < 2 or not set(variants) <= set(VARIANTS) or variants[0] != "loop":
        ap.error(f"--variants: 'loop' first, then one or more of {VARIANTS[1:]}")
    import torch

    torch.set_num_threads(a.threads)
    seqs = corpus(max(a.n, a.padding_n), a.min_len, a.max_len, seed=0)
    pad_seqs, seqs = seqs[: a.padding_n], seqs[: a.n]
    bases = sum(map(len, seqs))
    work = Path(tempfile.mkdtemp(prefix="bench-hf-"))
    files = []
    for i in range(4):
        part = seqs[i::4]
        t = pa.table({"id": [f"f{i}_{j}" for j in range(len(part))], "sequence": part})
        pq.write_table(t, work / f"part{i}.parquet", row_group_size=1024)
        files.append(work / f"part{i}.parquet")
    probe, _ = load_encoder(a.model, "loop", a.batch_size, a.tokens_per_batch)
    device, dtype = probe.device, str(probe.dtype)
    print(f"{a.n} sequences, {a.min_len}-{a.max_len} bp, {bases} bases; device {device}; torch threads "
          f"{torch.get_num_threads()}, {dtype} (interop {torch.get_num_interop_threads()}); batch {a.batch_size}, token budget "
          f"{a.tokens_per_batch}; tiles {probe.tile_nt} bp, overlap {probe.config.overlap_nt}; {os.cpu_count()} CPUs, "
          f"load average {_load()}", flush=True)
    pad_bases = sum(map(len, pad_seqs))
    print(f"padding waste of the batch plans (padded/real bases, {a.padding_n} sequences, {pad_bases} bases, "
          "1,024-record calls):",
          padding_report([len(s) for s in pad_seqs], probe.tile_nt, probe.config.overlap_nt, 1024, a.batch_size,
                         a.tokens_per_batch), flush=True)
    del probe
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(a.repeats):
        for variant in (variants if r % 2 == 0 else variants[::-1]):
            res = run(files, a.model, variant, a.batch_size, a.tokens_per_batch, work)
            assert res["written"] == a.n, res["written"]
            runs[variant].append(res)
            s = res["seconds"]
            print(f"  repeat {r} {variant:<10} {s:7.1f} s  {a.n / s:8.1f} seq/s  {res['real'] / s:9.0f} tokens/s  "
                  f"cpu {res['cpu']:6.1f} s (forward {res['forward_cpu']:5.1f})  padding {res['padded'] / res['real'] - 1:.3f} in {res['calls']} "
                  f"forward calls  load {_load()}", flush=True)
    base = runs["loop"]
    for variant in variants:
        rs = runs[variant]
        wall = statistics.median(x["seconds"] for x in rs)
        cpu = statistics.median(x["cpu"] for x in rs)
        tokens = rs[0]["real"]
        fwd = statistics.median(x["forward_cpu"] for x in rs)
        line = (f"{variant:<10} median {a.n / wall:7.2f} seq/s, {tokens / wall:8.0f} tokens/s, cpu {cpu:6.1f} s "
                f"({tokens / cpu:.0f} tokens per CPU-s), padding {rs[0]['padded'] / tokens - 1:.3f}")
        if variant == "loop" and a.threads == 1 and device == "cpu":
            # what overlapping can hide at best: the smaller of forward and the rest (read, clean,
            # tokenize, write), given a free core for the rest (Amdahl; independent of the load)
            line += (f"; forward {fwd:.1f} CPU-s = {fwd / cpu:.0%} of the run, so overlap can give at most "
                     f"x{cpu / max(fwd, cpu - fwd):.2f} with a spare core")
        if variant != "loop":
            ratios = [b["seconds"] / x["seconds"] for b, x in zip(base, rs)]
            cpu_ratios = [b["cpu"] / x["cpu"] for b, x in zip(base, rs)]
            cos = (base[-1]["vectors"] * rs[-1]["vectors"]).sum(1) / (
                np.linalg.norm(base[-1]["vectors"], axis=1) * np.linalg.norm(rs[-1]["vectors"], axis=1))
            line += (f"; vs loop: speed-up x{statistics.median(ratios):.2f} (per repeat "
                     f"{', '.join(f'{x:.2f}' for x in ratios)}; min-max {min(ratios):.2f}-{max(ratios):.2f}), "
                     f"CPU-time ratio x{statistics.median(cpu_ratios):.2f}, min cosine {cos.min():.6f}")
            floor = 0.9999 if dtype == "torch.float32" else 0.999
            assert cos.min() >= floor, f"{variant} vs loop: min cosine {cos.min():.6f} < {floor} ({dtype})"
        print(line)
    print(f"load average at the end {_load()}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
