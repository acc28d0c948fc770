"""A shard-grouped bundle through ``ingress="auto"`` (HAProxy, direct-ingress replicas that
scatter to the ``searcher-<g>`` deployments), run as its own process: HAProxy mode must be in
the environment before Ray starts. Prints one line ``RESULT <json>`` (tests/test_serve_groups.py).

    python tests/groups_haproxy.py WORK
"""

import asyncio
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

from genoray.serving.haproxy import haproxy_env


def main() -> None:
    work = Path(sys.argv[1])
    port, stats, metrics = (int(p) for p in sys.argv[2:5])
    os.environ.update(haproxy_env(stats_port=stats, metrics_port=metrics))
    from groups_cluster import answer, oracle, post
    from ray import serve
    from replicas import replica_pid
    from test_serve_groups import build_indexes, queries

    from genoray.bundle import current_bundle, publish
    from genoray.config import ServeConfig
    from genoray.infra.runtime import init_ray
    from genoray.pipeline import write_bundle
    from genoray.serving.app import build_app, resolve_ingress, start_http

    built = build_indexes(work / "data", n=1200)
    root = work / "grouped"
    v1 = write_bundle(root, built["flat4"], built["head"], shard_groups=2)
    publish(root, v1)
    seqs = queries(24)
    truth = oracle(root, v1, seqs)  # every shard in one process: the monolithic answer
    cfg = ServeConfig(root=str(root), port=port, require_key=False, min_replicas=2, max_replicas=2, num_cpus=0.1,
                      poll_s=0.5, access_log=False, predict_timeout_s=20,
                      local_groups_mb=0)  # the searchers are what this test kills: no group searched in-process
    res: dict = {"ingress": resolve_ingress(cfg, current_bundle(root)), "v1": v1}
    init_ray()
    start_http(cfg)
    serve.run(build_app(cfg), name="genoray", route_prefix="/")
    path = "/v1/predict"
    deadline = time.time() + 120
    while post(port, path, seqs[0])[0] != 200 and time.time() < deadline:
        time.sleep(0.3)
    got = [post(port, path, s) for s in seqs]
    res["statuses"] = sorted({g[0] for g in got})
    res["same_as_oracle"] = sum(g[0] == 200 and answer(json.loads(g[1])) == t for g, t in zip(got, truth))
    res["queries"] = len(seqs)
    res["headers"] = [g[2] for g in got[:2]]

    # 8 concurrent clients, one searcher-1 replica SIGKILLed meanwhile: retried on the other one
    results: list = []
    lock, stop, killed = threading.Lock(), time.time() + 10, {}

    def worker(w: int) -> None:
        i = w
        while time.time() < stop:
            status, body, header = post(port, path, seqs[i % len(seqs)])
            ok = status == 200 and answer(json.loads(body)) == truth[i % len(seqs)]
            with lock:
                results.append((status, ok, header))
                if not killed and len(results) > 40 and status == 200:
                    replica = header.split("searcher-1=")[1].split("@")[1].split()[0]
                    killed["pid"] = replica_pid(replica)
                    os.kill(killed["pid"], signal.SIGKILL)
            i += 8

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res["load"] = {"requests": len(results), "failed": sum(r[0] != 200 for r in results),
                   "wrong": sum(r[0] == 200 and not r[1] for r in results), "killed_pid": killed.get("pid")}

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=10) as r:
        info = json.loads(r.read())
    res["info_shard_groups"] = info.get("shard_groups")

    # a whole group down: every searcher-1 replica SIGKILLed while its shard file of v1 is corrupt
    shard = root / "versions" / v1 / "index" / "shard-02.faiss"
    shard.chmod(0o644)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    async def searcher_1() -> set[str]:  # this mode's handles run their router in the caller's event loop
        handle = serve.get_deployment_handle("searcher-1", app_name="genoray")
        found: set[str] = set()
        end = time.time() + 60  # both replicas, the one that replaced the replica killed above included
        while len(found) < 2 and time.time() < end:
            found.add((await handle.info.remote())["replica"])
        return found

    replicas = asyncio.run(searcher_1())
    for replica in replicas:
        os.kill(replica_pid(replica), signal.SIGKILL)
    time.sleep(1)
    down = [post(port, path, s) for s in seqs[:3]]
    res["group_down"] = [(status, body[:300].decode(errors="replace"), header) for status, body, header in down]
    res["killed_searchers"] = sorted(replicas)
    print("RESULT", json.dumps(res), flush=True)
    # no serve.shutdown(): direct-ingress replicas keep a 30 s drain; the local Ray ends with this process


if __name__ == "__main__":
    main()
