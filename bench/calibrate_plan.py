"""The capacity plan's machine constants measured on this machine, beside the values the plan uses.

The plan (``genoray/index/capacity.py``, ``genoray/index/stage_costs.py``) prices work with a few
rates and start costs that belong to the machine, not to the data; they were measured on the
project machine (2-core AMD EPYC VM) while it was idle and scale with its load. This script
re-measures them, so a user can tell how far another machine is from them (and pass
``--gflops-per-core`` to ``genoray plan``):

* ``gflops_per_core``: faiss kNN (sgemm) rate per core (``bench_index.measure_gflops_per_core``);
* ``HASH_MB_S``: sha256 of 256 MiB in memory on one core (hashlib);
* ``START_S``: a fresh interpreter importing the store code (``genoray.embedding.store``);
* ``PIPELINE_START_S``: ... importing the head fit (``genoray.pipeline.train``: heads, encoders).

The rates and per-row bytes the plan fitted to ``bench/bench_growth.py`` runs (scan rate,
L-BFGS passes, working memory) are not re-measured here: docs/capacity.md says what each was
fitted on.

    python bench/calibrate_plan.py [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def import_seconds(module: str, repeats: int = 3) -> float:
    """Median wall seconds of a fresh ``python -c "import module"``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def hash_mb_s(mb: int = 256) -> float:
    """sha256 throughput on one core, MB/s."""
    data = os.urandom(mb << 20)
    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    return mb / (time.perf_counter() - t0)


def measure() -> dict[str, dict[str, float]]:
    """Each constant: ``measured`` now and ``plan`` (the value the plan uses)."""
    from bench_index import measure_gflops_per_core

    from genoray.config import ClusterSpec
    from genoray.index import stage_costs

    return {
        "gflops_per_core": {"measured": measure_gflops_per_core(), "plan": ClusterSpec().gflops_per_core},
        "HASH_MB_S": {"measured": hash_mb_s(), "plan": stage_costs.HASH_MB_S},
        "START_S": {"measured": import_seconds("genoray.embedding.store"), "plan": stage_costs.START_S},
        "PIPELINE_START_S": {"measured": import_seconds("genoray.pipeline.train"), "plan": stage_costs.PIPELINE_START_S},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    out = measure()
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"load_avg": load, "cores": os.cpu_count(), **out}, indent=1))
        return
    print(f"{os.cpu_count()} cores, load average {load:.2f}")
    for k, v in out.items():
        print(f"{k:<17} measured {v['measured']:>9.2f}   plan {v['plan']:>9.2f}   measured / plan {v['measured'] / v['plan']:.2f}")


if __name__ == "__main__":
    main()
