"""Replica memory and start time: index memory-mapped vs read into RAM (issue #13 item 1).

Builds IVF bundles of ``--sizes`` synthetic x 64 vectors (``genoray.index.synthetic``, auto
factory, the store's encoder recorded as a 64-dimensional 3-mer encoder so a real
:class:`~genoray.predictor.Predictor` loads and encodes queries). For each size and mode a
fresh process starts a :class:`~genoray.bundle.BundleHolder` (what a Serve replica does in its
constructor), predicts ``--queries`` random 81 bp sequences and reports its memory from
``/proc/self/status`` and ``/proc/self/smaps_rollup``:

* RSS, and its parts: RssAnon (private heap: what the process alone holds) and RssFile
  (mapped file pages, shared with every process of the node mapping the same file);
* PSS (shared pages divided among their sharers) with two replicas of the same mode alive;
* ``bundle`` = RSS after loading and predicting minus RSS before the load (same process, all
  modules imported), and ``private`` the same for RssAnon: what the bundle costs the replica
  alone (mapped pages the queries touched count in RSS but are the node's page cache, one copy
  for all replicas).

Start times: the first replica on the node (hashes every file, then writes the node's
verified record) and the second (the record matches: nothing is hashed). Pages are warm (the
build just wrote the files); dropping the page cache needs root, so a replica on a fresh node
also pays reading the index from disk. Predictions of the two modes are compared exactly.

    python bench/bench_serve_memory.py [--sizes 250000,1000000] [--queries 1000] [--repeats 1]
                                       [--work DIR]  (reuses the bundles built there)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPLICA = """
import json, os, sys, time
import numpy as np
from genoray.bundle import BundleHolder
import genoray.artifacts as art
import faiss, genoray.predictor, genoray.monitor, genoray.heads, genoray.ood  # imported before the first reading and the patch (only the bundle check counts)

def mem():
    out = {}
    for f in ("/proc/self/status", "/proc/self/smaps_rollup"):
        for line in open(f):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "Pss", "Private_Clean", "Private_Dirty"):
                out[k] = int(v.split()[0]) * 1024
    return out

hashed = [0]
real = art.sha256_file
def counting(p, *a, **k):
    hashed[0] += 1
    return real(p, *a, **k)
art.sha256_file = counting
root, mmap, queries, out, wait = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], sys.argv[5]
before = mem()
t0 = time.perf_counter()
h = BundleHolder(root, poll_s=3600, mmap=mmap)
start_s = time.perf_counter() - t0
rng = np.random.default_rng(0)
seqs = ["".join(rng.choice(list("ACGT"), 81)) for _ in range(queries)]
preds = []
for i in range(0, queries, 64):
    preds += [p.to_dict() for p in h.predictor.predict(seqs[i:i + 64], k=10)]
json.dump([[p["label"], p["probabilities"], [n["seq_id"] for n in p["neighbours"]]] for p in preds], open(out, "w"))
after = mem()
print(json.dumps({"start_s": start_s, "hashed": hashed[0], "before": before, "after": after}), flush=True)
if wait != "-":  # stay alive until the file appears (a second replica measures PSS meanwhile)
    while not os.path.exists(wait):
        time.sleep(0.1)
h.close()
"""


def make_bundle(work: Path, n: int, head_dir: Path | None) -> Path:
    """A published bundle of ``n`` x 64 synthetic vectors; the head is fitted once and reused."""
    from genoray.artifacts import read_json, write_json
    from genoray.bundle import publish, write_bundle
    from genoray.config import HeadConfig, IndexConfig, KmerConfig
    from genoray.encoders import fingerprint
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.index.synthetic import write_synthetic_store
    from genoray.train import train_head

    if (work / f"bundles{n}" / "CURRENT").is_file():
        return work / f"bundles{n}"
    store = write_synthetic_store(work / f"store{n}", n, 64, parts=max(2, n // 125_000))
    enc = KmerEncoder(KmerConfig(ks=(3,), gc=False, zcurve=False))
    spec = json.loads(json.dumps(enc.spec()))
    doc = read_json(store / "store.json")
    doc.update(encoder=spec, fingerprint=fingerprint(enc))
    write_json(store / "store.json", doc)
    write_json(store / "encoder.json", spec)
    t0 = time.perf_counter()
    build_index(store, work / f"index{n}", IndexConfig(split=None, recall_queries=200))
    print(f"built index of {n:,} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if head_dir is None:
        head_dir = work / "head"
        train_head(store, work / f"index{n}", head_dir, HeadConfig(max_rows=20_000), split=None)
    root = work / f"bundles{n}"
    publish(root, write_bundle(root, work / f"index{n}", head_dir))
    return root


def replica(root: Path, mmap: bool, queries: int, out: Path, wait: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", REPLICA, str(root), "1" if mmap else "0", str(queries), str(out),
                             str(wait) if wait else "-"], stdout=subprocess.PIPE, text=True)


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="250000,1000000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1, help="replica starts per size and mode (median start times)")
    ap.add_argument("--work", help="directory of an earlier run whose bundles are reused")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-serve-mem-"))
    os.environ["GENORAY_CACHE"] = str(work / "cache")  # a fresh node: nothing verified yet
    head = None
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        root = make_bundle(work, n, head)
        head = work / "head"
        for rep in range(args.repeats):
            for mmap in (False, True):  # alternating, so a drift of the machine's load reaches both
                tag = "mmap" if mmap else "ram"
                done = work / f"done-{n}-{tag}-{rep}"
                a = replica(root, mmap, args.queries, work / f"pred-{n}-{tag}-a.json", done)
                ra = json.loads(a.stdout.readline())  # type: ignore[union-attr]
                b = replica(root, mmap, args.queries, work / f"pred-{n}-{tag}-b.json", done)
                rb = json.loads(b.stdout.readline())  # type: ignore[union-attr]
                done.touch()
                a.wait()
                b.wait()
                rows.append((n, tag, ra, rb))
                for f in os.listdir(work / "cache" / "verified"):  # the next first replica: a fresh node
                    os.unlink(work / "cache" / "verified" / f)
        same = all(json.load(open(work / f"pred-{n}-ram-a.json")) == json.load(open(work / f"pred-{n}-{t}-{r}.json"))
                   for t in ("ram", "mmap") for r in "ab")
        print(f"{n:,}: predictions of {args.queries} queries identical in both modes and both replicas: {same}")
    import statistics

    print(f"{'vectors':>9} {'mode':<5} {'RSS MiB':>8} {'anon':>6} {'file':>6} {'PSS(2)':>7} {'bundle':>7} {'private':>7} "
          f"{'start 1st s':>11} {'hashed':>6} {'start 2nd s':>11} {'hashed':>6}")
    summary = {}
    for key in dict.fromkeys((n, tag) for n, tag, _, _ in rows):
        runs = [(ra, rb) for n, tag, ra, rb in rows if (n, tag) == key]
        ra, rb = runs[-1]
        aft, bef = rb["after"], rb["before"]
        private = aft["RssAnon"] - bef["RssAnon"]
        summary[key] = (aft, private)
        s1 = statistics.median(r[0]["start_s"] for r in runs)
        s2 = statistics.median(r[1]["start_s"] for r in runs)
        print(f"{key[0]:>9,} {key[1]:<5} {mib(aft['VmRSS']):>8} {mib(aft['RssAnon']):>6} {mib(aft['RssFile']):>6} "
              f"{mib(aft['Pss']):>7} {mib(aft['VmRSS'] - bef['VmRSS']):>7} {mib(private):>7} {s1:>11.2f} "
              f"{ra['hashed']:>6} {s2:>11.2f} {rb['hashed']:>6}")
    for n in sorted({r[0] for r in rows}):
        (ram, pram), (mm, pmm) = summary[(n, "ram")], summary[(n, "mmap")]
        print(f"ratio mmap / ram at {n:,}: RSS {mm['VmRSS'] / ram['VmRSS']:.2f}x, private (anon) "
              f"{mm['RssAnon'] / ram['RssAnon']:.2f}x, PSS with 2 replicas {mm['Pss'] / ram['Pss']:.2f}x, "
              f"bundle's private memory {pmm / max(pram, 1):.2f}x ({mib(pmm)} vs {mib(pram)} MiB)")


if __name__ == "__main__":
    main()
