"""Soak test of the Ray Serve predictor on 127.0.0.1 (reliability plan F2; nightly-sized).

Runs Serve (2 model replicas, bundle from the bundled E. coli data) and a bounded loop of mixed
requests for ``--minutes``: valid 1- and 8-sequence predictions, and invalid ones (bad
alphabet, too many sequences, malformed JSON, missing key) that must get their 4xx. Every
``--sample-s`` it records each model replica's RSS and open file descriptors (replicas are
found from the opaque id in the ``X-Genoray-Replica`` header through Ray's actor table). At the end it prints, and checks:

* unexpected status codes (a valid request not 200, an invalid one not its 4xx): must be 0;
* model replicas seen: must stay 2 (a restart would show a new pid);
* RSS growth from the first sample after warm-up to the last: must be < 10 %;
* open file descriptors: must not grow by more than 5 (connections come and go).

    python bench/soak_serve.py [--minutes 10] [--concurrency 8]

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_serve import make_bundle, wait_ready

from genoray.infra.ports import free_port

KEY = "soak-key"


def replica_stats(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def replica_pid(replica: str) -> int | None:
    """The pid of the live Serve replica whose (opaque) id is ``replica``, from Ray's actor table."""
    from ray._private.state import state

    pids = [a["Pid"] for a in state.actor_table(None).values()
            if a["Name"].endswith(f"#{replica}") and a["State"] in ("ALIVE", 2) and a["Pid"]]
    return int(pids[0]) if len(pids) == 1 else None


def main() -> int:
    import pyarrow.parquet as pq
    from ray import serve

    from genoray.bundle import publish
    from genoray.infra.runtime import init_ray
    from genoray.pipeline.quickstart import bundled_dataset
    from genoray.serving.app import ServeConfig, build_app, start_http
    from genoray.serving.service import hash_key

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sample-s", type=float, default=10.0)
    args = ap.parse_args()
    if args.minutes > 60 or args.concurrency > 64:
        raise SystemExit("soak runs are bounded: at most 60 minutes and 64 clients")
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    root = work / "bundles"
    publish(root, make_bundle(work, root, 0))
    seqs = pq.read_table(bundled_dataset(), columns=["sequence"])["sequence"].to_pylist()
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    cases = [  # (body, headers, expected status)
        (json.dumps({"sequences": seqs[:1], "k": 5}), auth, 200),
        (json.dumps({"sequences": seqs[:8], "k": 5}), auth, 200),
        (json.dumps({"sequences": ["ACGTQ"]}), auth, 422),
        (json.dumps({"sequences": seqs[:1] * 65}), auth, 422),
        ('{"sequences": [', auth, 422),
        (json.dumps({"sequences": seqs[:1]}), {"Content-Type": "application/json"}, 401),
    ]
    weights = [40, 20, 10, 10, 10, 10]
    schedule = [i for i, w in enumerate(weights) for _ in range(w)]

    init_ray()
    port = free_port()
    cfg = ServeConfig(root=str(root), port=port, key_hashes=(hash_key(KEY),), min_replicas=2, max_replicas=2,
                      poll_s=2.0, num_cpus=0.4, ingress="proxy")  # in-process Ray without HAProxy's env
    start_http(cfg)
    serve.run(build_app(cfg), name="soak", route_prefix="/")
    wait_ready(port)

    stop_at = time.time() + 60 * args.minutes
    counts: dict[tuple[int, int], int] = {}
    replicas: set[str] = set()
    lock = threading.Lock()

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = offset
        while time.time() < stop_at:
            case = schedule[i % len(schedule)]
            i += 7
            body, headers, want = cases[case]
            try:
                conn.request("POST", "/v1/predict", body, headers)
                r = conn.getresponse()
                r.read()
                status, replica = r.status, r.getheader("X-Genoray-Replica", "")
            except OSError:
                status, replica = 0, ""
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                counts[(want, status)] = counts.get((want, status), 0) + 1
                if replica:
                    replicas.add(replica)
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.concurrency)]
    t0 = time.time()
    for t in threads:
        t.start()
    samples: list[tuple[float, dict[int, tuple[float, int]]]] = []
    while any(t.is_alive() for t in threads):
        time.sleep(args.sample_s)
        with lock:
            known = set(replicas)
        pids = {pid for pid in map(replica_pid, known) if pid is not None}
        stats = {}
        for pid in pids:
            try:
                stats[pid] = replica_stats(pid)
            except OSError:
                pass  # a replica that is gone shows up as a new pid in `replicas`
        samples.append((time.time() - t0, stats))
    serve.shutdown()

    total = sum(counts.values())
    unexpected = sum(n for (want, got), n in counts.items() if want != got)
    warm = [s for s in samples if s[0] >= min(60.0, 0.2 * 60 * args.minutes)] or samples
    first, last = warm[0][1], warm[-1][1]
    growth = {pid: (last[pid][0] - first[pid][0]) / first[pid][0] for pid in first if pid in last}
    fd_growth = {pid: last[pid][1] - first[pid][1] for pid in first if pid in last}
    print(f"soak: {args.minutes:g} min, {args.concurrency} clients, {total} requests "
          f"({total / (time.time() - t0):.0f}/s), {os.cpu_count()} CPUs")
    print("status (expected -> got: count):", {f"{w}->{g}": n for (w, g), n in sorted(counts.items())})
    print(f"unexpected statuses: {unexpected}; model replicas seen: {len(replicas)}")
    for pid in sorted(first):
        if pid in last:
            print(f"replica pid {pid}: RSS {first[pid][0]:.0f} -> {last[pid][0]:.0f} MiB ({100 * growth[pid]:+.1f} %), "
                  f"open fds {first[pid][1]} -> {last[pid][1]}")
    ok = unexpected == 0 and len(replicas) == 2 and all(g < 0.10 for g in growth.values()) \
        and all(d <= 5 for d in fd_growth.values()) and len(growth) == 2
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
