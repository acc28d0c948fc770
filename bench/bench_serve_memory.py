"""Replica memory and start time: index memory-mapped vs read into RAM (issue #13 item 1).

Builds bundles of ``--sizes`` synthetic x ``--dim`` vectors (``genoray.embedding.synthetic``,
``--index-type``: the auto factory, IVF / SQ8, by default; ``Flat`` for an index that dominates
the replica: 1M x 256 is 1 GB), the store's encoder recorded as a 3-mer (64) or 4-mer (256)
encoder so a real :class:`~genoray.predict.predictor.Predictor` loads and encodes queries. For each size and mode a
fresh process starts a :class:`~genoray.bundle.store.BundleHolder` (what a Serve replica does in its
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
verified record) and the second (the record matches: nothing is hashed), with a warm page
cache (the build just wrote the files). Predictions of the two modes are compared exactly.

Cold start (``--start-repeats``, medians): a replica's start, bundle open + first query
answered (imports excluded: the same in both modes), with the node's verified record present,
timed with the bundle's pages out of the page cache ("cold": every file of the version, the
``CURRENT`` pointer and the node's cache are fsynced and evicted with
``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs no root, and ``mincore`` then confirms that
none of their pages is resident) and in it ("warm": every file read through first). Each start
reports the bytes it fetched from storage (``read_bytes`` of ``/proc/self/io``) and how much of
the bundle is resident after it (memory-mapped, only the pages the open and the query touched
are read). The Python libraries stay cached: a real fresh node also reads those.

    python bench/bench_serve_memory.py [--sizes 250000,1000000] [--queries 1000] [--repeats 1]
                                       [--start-repeats 3] [--only-start] [--dim 64|256]
                                       [--index-type auto|Flat|FACTORY]
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
from genoray.serving.holder import BundleHolder
import genoray.infra.artifacts as art
import faiss, genoray.predict.predictor, genoray.serving.monitor, genoray.heads, genoray.scoring.ood  # imported before the first reading and the patch (only the bundle check counts)
import ray.serve  # a Serve replica has it imported (the drift monitor looks for a replica context)

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


START = """
import json, resource, sys, time
import numpy as np
from genoray.serving.holder import BundleHolder
import faiss, genoray.predict.predictor, genoray.serving.monitor, genoray.heads, genoray.scoring.ood  # imports are not timed
import ray.serve  # a Serve replica has it imported (the drift monitor looks for a replica context)

def io():
    return dict((k, int(v)) for k, v in (line.split(": ") for line in open("/proc/self/io")))

seq = "".join(np.random.default_rng(1).choice(list("ACGT"), 81))
io0, flt0 = io(), resource.getrusage(resource.RUSAGE_SELF).ru_majflt
t0 = time.perf_counter()
h = BundleHolder(sys.argv[1], poll_s=3600, mmap=sys.argv[2] == "1")
t1 = time.perf_counter()
h.predictor.predict([seq], k=10)
t2 = time.perf_counter()
io1, flt1 = io(), resource.getrusage(resource.RUSAGE_SELF).ru_majflt
print(json.dumps({"open_s": t1 - t0, "first_s": t2 - t1, "read": io1["read_bytes"] - io0["read_bytes"],
                  "majflt": flt1 - flt0}), flush=True)
h.close()
"""


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache (``mincore`` over a fresh read-only mapping)."""
    import ctypes
    import mmap as mm

    size = path.stat().st_size
    if size == 0:
        return 0
    libc, page = _libc(), mm.PAGESIZE
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mm.PROT_READ, mm.MAP_SHARED, f.fileno(), 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap {path}")
    try:
        vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
        if libc.mincore(addr, size, vec) != 0:
            raise OSError(ctypes.get_errno(), f"mincore {path}")
        return min(size, sum(v & 1 for v in vec) * page)
    finally:
        libc.munmap(addr, size)


def node_files(work: Path, root: Path) -> list[Path]:
    """Every file a replica of ``root``'s current version reads: the version, ``CURRENT``, the node's cache."""
    from genoray.bundle import current_version

    vdir = root / "versions" / str(current_version(root))
    return [p for d in (vdir, work / "cache") for p in sorted(d.rglob("*")) if p.is_file()] + [root / "CURRENT"]


def evict(files: list[Path]) -> int:
    """Write back and drop ``files``' pages from the page cache (no root needed); returns the
    bytes still resident afterwards (0 when eviction worked)."""
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return sum(resident_bytes(p) for p in files)


def warm(files: list[Path]) -> int:
    """Read ``files`` through (into the page cache); returns the bytes not resident afterwards."""
    for p in files:
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass
    return sum(p.stat().st_size - resident_bytes(p) for p in files)


def read_rate(path: Path) -> float:
    """MB/s of reading ``path`` through once (cold or warm, as the caller left it)."""
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass
    return path.stat().st_size / 1e6 / (time.perf_counter() - t0)


def cold_starts(work: Path, root: Path, n: int, repeats: int) -> list[tuple]:
    """Replica starts of ``root``, cold and warm page cache, RAM and memory-mapped, alternating
    the order of the modes per repeat; the node's verified record exists (written by a first
    verifying load), so nothing is hashed and the start reads only what the load needs."""
    from genoray.bundle import current_version, verify_bundle

    verify_bundle(root, str(current_version(root)), cached=True)  # the node's record
    files = node_files(work, root)
    total = sum(p.stat().st_size for p in files)
    big = max(files, key=lambda p: p.stat().st_size)
    left = evict(files)
    cold_rate = read_rate(big)
    print(f"{n:,}: bundle files {len(files)}, {mib(total)} MiB; after eviction {left:,} bytes resident; "
          f"reading {big.name} ({mib(big.stat().st_size)} MiB) cold {cold_rate:,.0f} MB/s, "
          f"warm {read_rate(big):,.0f} MB/s; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for rep in range(repeats):
        for mmap in ((False, True) if rep % 2 == 0 else (True, False)):
            for state in ("cold", "warm"):
                left = evict(files) if state == "cold" else warm(files)
                if left:
                    raise RuntimeError(f"{state} start of {n:,}: {left:,} bytes not {'evicted' if state == 'cold' else 'cached'}")
                p = subprocess.run([sys.executable, "-c", START, str(root), "1" if mmap else "0"],
                                   capture_output=True, text=True, check=True)
                r = json.loads(p.stdout.splitlines()[-1])
                r["resident_after"] = sum(resident_bytes(f) for f in files)
                r["load"] = os.getloadavg()[0]
                rows.append((n, "mmap" if mmap else "ram", state, r))
    for f in (work / "cache" / "verified").iterdir():  # the node is fresh again for the memory runs
        f.unlink()
    return rows


def report_starts(rows: list[tuple]) -> None:
    """Median start (open + first query) per size, mode and page-cache state, and same-run ratios."""
    import statistics

    print(f"{'vectors':>9} {'mode':<5} {'cache':<5} {'open s':>7} {'1st query s':>11} {'start s':>8} "
          f"{'read MiB':>8} {'major faults':>12} {'resident after MiB':>18} {'load':>5}")
    med = {}
    for key in dict.fromkeys(r[:3] for r in rows):
        rs = [r[3] for r in rows if r[:3] == key]
        m = {k: statistics.median(x[k] for x in rs) for k in ("open_s", "first_s", "read", "majflt", "resident_after", "load")}
        m["start_s"] = statistics.median(x["open_s"] + x["first_s"] for x in rs)
        med[key] = m
        print(f"{key[0]:>9,} {key[1]:<5} {key[2]:<5} {m['open_s']:>7.2f} {m['first_s']:>11.3f} {m['start_s']:>8.2f} "
              f"{mib(m['read']):>8} {m['majflt']:>12,.0f} {mib(m['resident_after']):>18} {m['load']:>5.2f}")
    for n in sorted({r[0] for r in rows}):
        s = {(mode, st): med[(n, mode, st)]["start_s"] for mode in ("ram", "mmap") for st in ("cold", "warm")}
        print(f"start ratios at {n:,} (medians of {sum(1 for r in rows if r[:3] == (n, 'ram', 'cold'))}): "
              f"mmap / ram cold {s['mmap', 'cold'] / s['ram', 'cold']:.2f}x, warm {s['mmap', 'warm'] / s['ram', 'warm']:.2f}x; "
              f"cold / warm ram {s['ram', 'cold'] / s['ram', 'warm']:.2f}x, mmap {s['mmap', 'cold'] / s['mmap', 'warm']:.2f}x")


def make_bundle(work: Path, n: int, dim: int = 64, index_type: str = "auto") -> Path:
    """A published bundle of ``n`` x ``dim`` synthetic vectors (``index_type``: ``auto`` or a
    FAISS factory); the head is fitted once per dimension and reused."""
    from genoray.bundle import publish
    from genoray.config import HeadConfig, IndexConfig, KmerConfig
    from genoray.embedding.synthetic import write_synthetic_store
    from genoray.encoders import fingerprint
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.infra.artifacts import read_json, write_json
    from genoray.pipeline import write_bundle
    from genoray.pipeline.train import train_head

    if dim not in (64, 256):
        raise ValueError(f"--dim {dim}: the recorded encoder is a 3-mer (64) or 4-mer (256) profile")
    tag = f"{n}" if (dim, index_type) == (64, "auto") else f"{n}-d{dim}-{index_type.replace(',', '_')}"
    root, index, head_dir = work / f"bundles{tag}", work / f"index{tag}", work / ("head" if dim == 64 else f"head-d{dim}")
    if (root / "CURRENT").is_file():
        return root
    store = work / (f"store{n}" if dim == 64 else f"store{n}-d{dim}")  # one store per size and dimension
    if not (store / "store.json").is_file():
        write_synthetic_store(store, n, dim, parts=max(2, n // 125_000))
    enc = KmerEncoder(KmerConfig(ks=(3 if dim == 64 else 4,), gc=False, zcurve=False))
    spec = json.loads(json.dumps(enc.spec()))
    doc = read_json(store / "store.json")
    doc.update(encoder=spec, fingerprint=fingerprint(enc))
    write_json(store / "store.json", doc)
    write_json(store / "encoder.json", spec)
    t0 = time.perf_counter()
    build_index(store, index, IndexConfig(index_type=index_type, split=None, recall_queries=200))
    print(f"built index of {n:,} x {dim} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not (head_dir / "head.json").is_file():
        train_head(store, index, head_dir, HeadConfig(max_rows=20_000))
    publish(root, write_bundle(root, index, head_dir))
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
    ap.add_argument("--start-repeats", type=int, default=3,
                    help="cold and warm replica starts per size and mode (medians); 0: skip")
    ap.add_argument("--only-start", action="store_true", help="measure the cold and warm starts only")
    ap.add_argument("--dim", type=int, default=64, choices=(64, 256), help="vector dimension")
    ap.add_argument("--index-type", default="auto", help="'auto' or a FAISS factory, e.g. Flat (exhaustive: every page touched)")
    ap.add_argument("--work", help="directory of an earlier run whose bundles are reused")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-serve-mem-"))
    os.environ["GENORAY_CACHE"] = str(work / "cache")  # a fresh node: nothing verified yet
    rows, starts = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        root = make_bundle(work, n, args.dim, args.index_type)
        if args.start_repeats:
            starts += cold_starts(work, root, n, args.start_repeats)
        if args.only_start:
            continue
        for rep in range(args.repeats):
            for mmap in (False, True):  # alternating, so a drift of the machine's load reaches both
                tag = "mmap" if mmap else "ram"
                done = work / f"done-{n}-{tag}-{rep}"
                done.unlink(missing_ok=True)  # left by an earlier run in --work: the first replica would exit early
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
    if starts:
        report_starts(starts)
    if not rows:
        return
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
