"""Run by tests/test_serve_groups.py in its own process: a 3-node ``ray.cluster_utils.Cluster``
(head + 2 workers), the grouped service (4 shards in 2 groups, 2 replicas per group) beside the
monolithic one (1 shard) in the same Serve instance. Prints one JSON line of measurements.

Usage: python tests/groups_cluster.py WORK_DIR
"""

import http.client
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from replicas import replica_pid

from bench.loadtest import run_threads
from genoray.infra.ports import free_port

K = 10



def post(port, path, seq):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, json.dumps({"sequences": [seq], "k": K}), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data, r.getheader("X-Genoray-Replica", "")


def answer(body: dict) -> tuple:
    """What must equal the oracle: label and the neighbours' seq_ids, in order."""
    p = body["predictions"][0]
    return p["label"], tuple(n["seq_id"] for n in p["neighbours"])


def oracle(root: Path, version: str, seqs: list[str]) -> list[tuple]:
    from genoray.predict import Predictor

    predictor, _ = Predictor.from_bundle(root, version)  # every shard in one process: the monolithic answer
    return [(p.label, tuple(n.seq_id for n in p.neighbours)) for p in predictor.predict(seqs, k=K)]


def load(port, path, seqs, seconds, oracles, concurrency=8, on_tick=None):
    """``concurrency`` clients cycling over ``seqs`` for ``seconds``; each answer is checked
    against ``oracles[bundle_version][query]`` and its shard groups' versions."""
    results, lock, stop = [], threading.Lock(), time.time() + seconds

    def worker(w):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = w
        while time.time() < stop:
            q = i % len(seqs)
            i += concurrency
            t0 = time.time()
            try:
                conn.request("POST", path, json.dumps({"sequences": [seqs[q]], "k": K}),
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                data, status, header = r.read(), r.status, r.getheader("X-Genoray-Replica", "")
            except Exception as e:  # a connection-level failure is a failed request
                data, status, header = repr(e).encode(), 0, ""
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            rec = {"t": t0, "lat": time.time() - t0, "status": status, "header": header}
            if status == 200:
                body = json.loads(data)
                rec["version"] = body["bundle_version"]
                rec["wrong"] = answer(body) != oracles[rec["version"]][q]
                groups = dict(p.split("=", 1) for p in header.split()[1:])
                rec["groups"] = groups
                rec["mixed"] = any(v.split("@")[0] != rec["version"] for v in groups.values())
            else:
                rec["error"] = data[:300].decode(errors="replace")
            with lock:
                results.append(rec)
        conn.close()

    return run_threads(worker, concurrency, results, on_tick)


def summary(results) -> dict:
    ok = [r for r in results if r["status"] == 200]
    lat = [1000 * r["lat"] for r in ok]
    return {"requests": len(results), "failed": len(results) - len(ok),
            "errors": sorted({r.get("error", "")[:160] for r in results if r["status"] != 200})[:3],
            "wrong": sum(r["wrong"] for r in ok), "mixed": sum(r.get("mixed", False) for r in ok),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat else None,
            "versions": sorted({r["version"] for r in ok})}


def recall(found: list[tuple], truth: list[tuple]) -> float:
    return float(np.mean([len(set(f[1]) & set(t[1])) / len(t[1]) for f, t in zip(found, truth)]))


def wait_version(port, path, seq, version, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, data, _ = post(port, path, seq)
        if status == 200 and json.loads(data)["bundle_version"] == version:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{path} did not reach {version}")


def main() -> None:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from test_serve_groups import build_indexes, queries

    from genoray.bundle import publish
    from genoray.config import ServeConfig
    from genoray.infra.runtime import ray_temp_dir
    from genoray.pipeline import write_bundle
    from genoray.serving.app import build_app

    work = Path(sys.argv[1])
    built = build_indexes(work / "data")
    grouped, mono = work / "grouped", work / "mono"
    v1 = write_bundle(grouped, built["flat4"], built["head"], shard_groups=2)
    v2 = write_bundle(grouped, built["ivf4"], built["head"], shard_groups=2)
    m1 = write_bundle(mono, built["flat1"], built["head"])
    m2 = write_bundle(mono, built["ivf1"], built["head"])
    publish(grouped, v1)
    publish(mono, m1)
    seqs = queries(48)
    oracles = {v1: oracle(grouped, v1, seqs), v2: oracle(grouped, v2, seqs),
               m1: oracle(mono, m1, seqs), m2: oracle(mono, m2, seqs)}
    assert oracles[v1] == oracles[m1]  # one Flat index of 1 or 4 shards: the same neighbours

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 120 * 2**20,
        "temp_dir": (ray_temp := ray_temp_dir("rg-"))})
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=120 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 30})
    # the proxy topology (no HAProxy env in this cluster's processes; tests/groups_haproxy.py has the default)
    common = dict(require_key=False, min_replicas=2, max_replicas=2, num_cpus=0.1, ingress_num_cpus=0.05,
                  ingress="proxy",
                  poll_s=0.5, access_log=False, predict_timeout_s=20,
                  local_groups_mb=0)  # the searchers on the worker nodes answer (one host's file system here)
    serve.run(build_app(ServeConfig(root=str(grouped), **common)), name="grouped", route_prefix="/grouped")
    serve.run(build_app(ServeConfig(root=str(mono), **common)), name="mono", route_prefix="/mono")
    gpath, mpath = "/grouped/v1/predict", "/mono/v1/predict"
    def searchers() -> dict[str, tuple[int, str]]:
        """replica -> (group, node), asked of each group's replicas through its handle."""
        found = {}
        for g in range(2):
            handle = serve.get_deployment_handle(f"searcher-{g}", app_name="grouped")
            for _ in range(30):
                info = handle.info.remote().result()
                found[info["replica"]] = (g, info["node"])
        return found

    replicas = searchers()
    searcher_nodes = sorted({node for _, node in replicas.values()})
    res: dict = {"v1": v1, "v2": v2, "nodes": len(ray.nodes()), "nodes_with_searchers": searcher_nodes,
                 "searcher_replicas": len(replicas)}

    # exactness: every query through the grouped and the monolithic Flat services
    g_ans = [answer(json.loads(post(port, gpath, s)[1])) for s in seqs]
    m_ans = [answer(json.loads(post(port, mpath, s)[1])) for s in seqs]
    res.update(flat_queries=len(seqs), flat_same_as_mono=sum(a == b for a, b in zip(g_ans, m_ans)),
               flat_same_as_oracle=sum(a == b for a, b in zip(g_ans, oracles[v1])))

    # latency: the same load on each service (8 clients, 1 sequence per request)
    res["grouped"] = summary(load(port, gpath, seqs, 8, oracles))
    res["mono"] = summary(load(port, mpath, seqs, 8, oracles))

    # a searcher replica SIGKILLed under load (2 replicas per group)
    killed: dict = {}

    def kill(results):
        if not killed and len(results) > 50:
            groups = next(r["groups"] for r in reversed(results) if r["status"] == 200)
            replica = groups["searcher-1"].split("@")[1]
            killed["replica"], killed["pid"] = replica, replica_pid(replica)
            os.kill(killed["pid"], signal.SIGKILL)
            killed["at"] = time.time()

    results = load(port, gpath, seqs, 12, oracles, on_tick=kill)
    res["kill"] = {**summary(results), "killed_pid": killed.get("pid"),
                   "killed_served": any(killed.get("replica", "?") in r["header"] for r in results),
                   "after_kill": sum(r["t"] > killed.get("at", 1e18) for r in results)}

    # a swap under load: CURRENT moves to v2 (an IVF index of 4 shards, 2 groups)
    swapped: dict = {}

    def swap(results):
        if not swapped and len(results) > 50:
            publish(grouped, v2)
            swapped["at"] = len(results)

    results = load(port, gpath, seqs, 15, oracles, on_tick=swap)
    res["swap"] = {**summary(results), "published_after": swapped.get("at"),
                   "last_version": results[-1].get("version") if results else None}

    # IVF recall of the grouped service (now v2) and of the monolithic IVF against exact search
    publish(mono, m2)
    wait_version(port, mpath, seqs[0], m2)
    g_ivf = [answer(json.loads(post(port, gpath, s)[1])) for s in seqs]
    m_ivf = [answer(json.loads(post(port, mpath, s)[1])) for s in seqs]
    res.update(ivf_recall_grouped=recall(g_ivf, oracles[v1]), ivf_recall_mono=recall(m_ivf, oracles[v1]),
               ivf_same_as_whole=sum(a == b for a, b in zip(g_ivf, oracles[v2])))

    # a whole group down: both searcher-1 replicas SIGKILLed while their shard file of v2 is corrupt
    shard = grouped / "versions" / v2 / "index" / "shard-02.faiss"
    shard.chmod(0o644)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    for replica, (g, _) in searchers().items():  # the replicas alive now (one was replaced above)
        if g == 1:
            os.kill(replica_pid(replica), signal.SIGKILL)
    time.sleep(1)
    down = [post(port, gpath, s) for s in seqs[:3]]
    res["group_down"] = [(status, body[:300].decode(errors="replace")) for status, body, _ in down]
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(ray_temp, ignore_errors=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
