"""Driver peak memory of the embed job's unique-id check, before (main at 8b7d451: every unit's
ids hashed and sorted together in the driver) and after (genoray.embedding.dedup: bucketed over
the units' sorted hash files, here in-process, the ``--no-ray`` path; on Ray the buckets run as
tasks and the driver holds only candidates).

Each measurement runs in a fresh subprocess; ``peak - base`` is its peak RSS (VmHWM) growth over
the RSS it had after imports (mapped hash-file pages it touched count too).

    python bench/bench_dedup.py --n 1000000 4000000 --units 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _rss_mb(key: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def before(shard_dir: Path, files: list[str]) -> None:
    """main's ``_check_unique_ids`` (genoray/embedding/job.py at 8b7d451), verbatim but for names."""
    def id_hashes(ids):
        return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                         for i in ids], dtype=np.uint64)
    parts, owners = [], []
    for i, f in enumerate(files):
        ids = pq.read_table(shard_dir / f, columns=["seq_id"])["seq_id"].to_pylist()
        parts.append(id_hashes(ids))
        owners.append(np.full(len(ids), i, dtype=np.int32))
    h = np.concatenate(parts)
    order = np.argsort(h, kind="stable")
    dup = np.flatnonzero(h[order][1:] == h[order][:-1])
    if len(dup):
        raise SystemExit("unexpected duplicate")


def after(shard_dir: Path, files: list[str], rows: int) -> None:
    """The bucketed check of this branch, in-process."""
    from genoray.embedding.dedup import find_duplicates

    if find_duplicates(shard_dir, [(f.replace(".parquet", ".ids.npy"), f) for f in files], rows=rows):
        raise SystemExit("unexpected duplicate")


def child(mode: str, shard_dir: Path, units: int, rows: int) -> None:
    from genoray.embedding.dedup import bucket_candidates

    files = [f"u{u:03d}.parquet" for u in range(units)]
    pq.read_metadata(shard_dir / files[0])  # lazy imports of both paths done before the base RSS
    bucket_candidates(str(shard_dir), [(files[0].replace(".parquet", ".ids.npy"), files[0])], 0, 1)
    base = _rss_mb()
    t = time.perf_counter()
    before(shard_dir, files) if mode == "before" else after(shard_dir, files, rows)
    print(json.dumps({"mode": mode, "seconds": round(time.perf_counter() - t, 2), "base_mb": round(base, 1),
                      "peak_mb": round(_rss_mb("VmHWM"), 1)}))  # not ru_maxrss: exec keeps the parent's


def write_units(d: Path, n: int, units: int) -> None:
    from genoray.embedding.dedup import id_hashes, sorted_hash_bytes

    for u in range(units):
        ids = [f"seq{i}" for i in range(u * n // units, (u + 1) * n // units)]
        pq.write_table(pa.table({"seq_id": pa.array(ids, pa.string())}), d / f"u{u:03d}.parquet")
        (d / f"u{u:03d}.ids.npy").write_bytes(sorted_hash_bytes(id_hashes(ids)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "DIR", "ROWS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], Path(a.child[1]), a.units, int(a.child[2]))
        return
    from genoray.embedding.dedup import buckets_for

    for n in a.n:
        with tempfile.TemporaryDirectory() as tmp:
            write_units(Path(tmp), n, a.units)
            res = {}
            for mode in ("before", "after"):
                out = subprocess.run([sys.executable, __file__, "--units", str(a.units), "--child", mode, tmp, str(n)],
                                     check=True, capture_output=True, text=True).stdout
                res[mode] = json.loads(out.strip().splitlines()[-1])
            grow = {m: r["peak_mb"] - r["base_mb"] for m, r in res.items()}
            print(json.dumps({"n": n, "units": a.units, "buckets": buckets_for(n),
                              "driver_growth_mb": {m: round(g, 1) for m, g in grow.items()},
                              "bytes_per_id": {m: round(g * 2**20 / n, 1) for m, g in grow.items()},
                              "ratio_before_over_after": round(grow["before"] / max(grow["after"], 0.1), 1),
                              "seconds": {m: r["seconds"] for m, r in res.items()}}))


if __name__ == "__main__":
    main()
