"""Online predictor load test on 127.0.0.1: Ray Serve (batched) vs a plain uvicorn app.

Builds a bundle from the bundled E. coli promoter data (k-mer encoder), then measures the
same predictor behind (a) one plain uvicorn/FastAPI process without batching (baseline),
(b) ``genoray serve --ingress proxy`` (Serve's Python proxy -> API replica -> batched model
replica; 1 model replica: on 2 cores a second adds no throughput) and (c) ``genoray serve
--ingress haproxy`` (HAProxy -> 2 replicas that each serve the API and batch their own
requests; the default). Each server runs as its own process (and Ray) the way a user starts
it. Requests carry 1 or 32 sequences; each load level runs a bounded loop (``--seconds`` and
at most 5,000 requests) from a separate client process, ``--repeats`` times, alternating with
the baseline (which runs beside each Serve server, idle while the other is measured), and
medians are reported: on a shared host the load drifts, and sequential runs of the servers
gave ratios that said more about the neighbours than about the servers. After each Serve
run, a swap under load: a new bundle is published; failures and per-replica version changes
are counted.

With ``--groups 2`` the bundle is published in 2 shard groups: both Serve topologies then run a
``searcher-<g>`` deployment per group behind the replicas that hold the encoder and head
(:mod:`genoray.serving.scatter`), against the uvicorn baseline over the whole bundle. Those
replicas search in-process the groups whose files are on their node (``local_groups_mb``, the
default; on one host, every group); the server ``haproxy-remote`` is the same with
``--local-groups-mb 0`` (every group through its searchers), and ``haproxy-1`` serves the same
data published as one group (no searchers), all in one run:

    python bench/bench_serve.py [--seconds 4] [--repeats 3] [--groups 2] [--servers haproxy,haproxy-remote,haproxy-1]
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

from genoray.infra.ports import free_port

CLIENT = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n" + """
import json, sys
from loadtest import run_load, summarize
port, path, body, seconds, conc = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
res = run_load(port, path, body, None, seconds=seconds, concurrency=conc, max_requests=5000)
print(json.dumps(summarize(res)))
"""



def wait_ready(port: int, path: str = "/v1/ready", timeout: float = 60) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"service on port {port} not ready")


def client(port: int, body: dict, seconds: float, conc: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), "/v1/predict", json.dumps(body), str(seconds), str(conc)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_bundle(work: Path, root: Path, seed: int, groups: int = 1) -> str:
    """A bundle of the bundled data; with ``groups`` > 1, an index of that many shards published
    in that many shard groups (a ``searcher-<g>`` deployment each when served)."""
    from genoray.config import HeadConfig, IndexConfig
    from genoray.embedding.job import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.pipeline import write_bundle
    from genoray.pipeline.quickstart import bundled_dataset
    from genoray.pipeline.train import train_head

    if not (work / "store").exists():
        embed_sequences(bundled_dataset(), work / "store", KmerEncoder(), use_ray=False)
    build_index(work / "store", work / f"index{seed}", IndexConfig(shards=groups) if groups > 1 else None)
    train_head(work / "store", work / f"index{seed}", work / f"head{seed}", HeadConfig(seed=seed))
    return write_bundle(root, work / f"index{seed}", work / f"head{seed}", shard_groups=[[g] for g in range(groups)] if groups > 1 else None)


def start_server(kind: str, root: Path, port: int, groups: int = 1, local_groups: bool = True) -> subprocess.Popen:
    """The uvicorn baseline or ``genoray serve --ingress KIND`` as a user runs it (own process, own Ray);
    with shard groups, every replica (searchers too) asks for 0.25 CPU so that all of them fit 2 cores."""
    env = dict(os.environ)
    if kind == "uvicorn":
        code = (f"import uvicorn; from genoray.serving.backends import plain_app; "
                f"uvicorn.run(plain_app({str(root)!r}), host='127.0.0.1', port={port}, log_level='warning')")
        cmd = [sys.executable, "-c", code]
    else:  # no access log, like the uvicorn baseline (log_level='warning' drops its access lines)
        replicas = "2" if kind == "haproxy" else "1"
        cmd = [sys.executable, "-m", "genoray.cli", "serve", str(root), "--port", str(port), "--no-auth",
               "--no-access-log", "--poll-s", "0.5", "--ingress", kind, "--min-replicas", replicas,
               "--max-replicas", replicas, *(["--num-cpus", "0.25"] if groups > 1 else []),
               *([] if local_groups else ["--local-groups-mb", "0"])]
        env.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # genoray serve stops Serve and Ray on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def swap_under_load(port: int, root: Path, body: dict, new_version: str) -> str:
    """Publish ``new_version`` during a 10 s load; count failures and per-replica version changes."""
    from loadtest import run_load

    from genoray.bundle import publish

    state = {}

    def tick(results):
        if not state and len(results) > 100:
            publish(root, new_version)
            state["t"] = time.time()

    res = run_load(port, "/v1/predict", body, None, seconds=10, concurrency=8, max_requests=5000, on_tick=tick)
    by_replica = {}
    for r in sorted(res):
        # the replica that holds the bundle (first token): with shard groups the header also lists
        # each group's version@replica, so the whole header changes with the version
        by_replica.setdefault(r[4].split(" ")[0], []).append(r[3])
    changes = {rep: sum(1 for a, b in zip(v, v[1:]) if a != b) for rep, v in by_replica.items()}
    failed = sum(1 for r in res if r[2] != 200)
    return (f"{len(res)} requests, {failed} failed; version changes per replica: {list(changes.values())}; "
            f"last version is the new one: {all(v[-1] == new_version for v in by_replica.values())}")


SERVERS = {"uvicorn": "uvicorn (no batching)", "proxy": "Serve --ingress proxy", "haproxy": "Serve haproxy (default)",
           "haproxy-remote": "haproxy, groups remote", "haproxy-1": "haproxy, one group"}


def server_spec(name: str, groups: int) -> tuple[str, int, bool]:
    """``(ingress, shard groups, local_groups)`` of a ``--servers`` entry."""
    if name == "haproxy-remote":
        return "haproxy", groups, False
    if name == "haproxy-1":
        return "haproxy", 1, True
    return name, groups, True


def median_summary(runs: list[dict]) -> dict:
    """Median of each figure over repeated runs (failures summed)."""
    import statistics

    return {"req_per_s": statistics.median(r["req_per_s"] or 0.0 for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs), "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "failed": sum(r["failed"] for r in runs)}


def main() -> None:
    import pyarrow.parquet as pq

    from genoray.bundle import publish
    from genoray.pipeline.quickstart import bundled_dataset

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3, help="runs per level and server (medians are reported)")
    ap.add_argument("--servers", default="haproxy,proxy",
                    help="comma-separated Serve topologies: haproxy (default), proxy; with --groups > 1 also "
                         "haproxy-remote (every group through its searchers) and haproxy-1 (the data as one group)")
    ap.add_argument("--groups", type=int, default=1,
                    help="shard groups of the served bundle (> 1: one searcher deployment per group; the uvicorn "
                         "baseline holds the whole bundle)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    specs = {name: server_spec(name, args.groups) for name in args.servers.split(",")}
    roots, versions = {}, {}
    for g in sorted({args.groups, *(spec[1] for spec in specs.values())}):  # a bundle root per group count
        roots[g] = work / f"bundles-{g}"
        versions[g] = [make_bundle(work / f"g{g}", roots[g], seed, g) for seed in range(3)]
        publish(roots[g], versions[g][0])
    root = roots[args.groups]  # the baseline: the whole bundle of the grouped data
    seqs = pq.read_table(bundled_dataset(), columns=["sequence"])["sequence"].to_pylist()
    bodies = {"1 seq": {"sequences": seqs[:1], "k": 5}, "32 seq": {"sequences": seqs[:32], "k": 5}}
    levels = [1, 8, 32]
    rows, swaps = [], {}
    print(f"load average at the start: {os.getloadavg()}", flush=True)
    base_port = free_port()
    base = start_server("uvicorn", root, base_port)
    try:
        wait_ready(base_port, timeout=180)
        for kind, (ingress, groups, local) in specs.items():
            port = free_port()
            proc = start_server(ingress, roots[groups], port, groups, local)
            try:
                wait_ready(port, timeout=180)
                for name, body in bodies.items():
                    for c in levels:
                        # the baseline and the server alternate run by run, so a change of the
                        # machine's load during the bench reaches both (a shared host drifts)
                        runs: dict[str, list] = {"uvicorn": [], kind: []}
                        for _ in range(args.repeats):
                            runs["uvicorn"].append(client(base_port, body, args.seconds, c))
                            runs[kind].append(client(port, body, args.seconds, c))
                        rows.append((kind, name, c, median_summary(runs[kind]), median_summary(runs["uvicorn"])))
                swaps[kind] = swap_under_load(port, roots[groups], bodies["1 seq"], versions[groups][1 + len(swaps) % 2])
            finally:
                stop_server(proc)
    finally:
        stop_server(base)
    print(f"load average at the end: {os.getloadavg()}")
    print(f"bundle: E. coli promoters, k-mer encoder, {args.groups} shard group(s); {args.seconds:g} s per run, median of {args.repeats} runs per "
          f"level, baseline runs interleaved with each server's; client in a separate process; {os.cpu_count()} CPUs")
    print(f"{'server':<24} {'request':<7} {'clients':>7} {'req/s':>8} {'seq/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'failed':>6} | {'uvicorn req/s':>13} {'p50':>6} {'p99':>6} | {'ratio':>6}")
    for kind, name, c, r, b in rows:
        n = 1 if name == "1 seq" else 32
        print(f"{SERVERS[kind]:<24} {name:<7} {c:>7} {r['req_per_s']:>8.1f} {r['req_per_s'] * n:>8.0f} "
              f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['failed']:>6} | {b['req_per_s']:>13.1f} {b['p50_ms']:>6.1f} "
              f"{b['p99_ms']:>6.1f} | {r['req_per_s'] / max(b['req_per_s'], 1e-9):>5.2f}x")
    for kind, line in swaps.items():
        print(f"swap under load ({SERVERS[kind]}): {line}")


if __name__ == "__main__":
    main()
