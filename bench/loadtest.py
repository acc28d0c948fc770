"""A bounded load generator for the predictor API, for tests and benchmarks.

Loopback only: the host is fixed to 127.0.0.1, and every run is bounded in both time and
request count. Threads with keep-alive ``http.client`` connections.
"""

from __future__ import annotations

import http.client
import json
import threading
import time


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarize(results, seconds: float | None = None) -> dict:
    """Throughput and latency percentiles (ms) of ``run_load`` results."""
    ok = [r for r in results if r[2] == 200]
    if not results:
        return {"requests": 0}
    span = seconds or (max(r[0] + r[1] for r in results) - min(r[0] for r in results))
    lat = [1000 * r[1] for r in ok]
    return {"requests": len(results), "ok": len(ok), "failed": len(results) - len(ok),
            "status_counts": {str(s): sum(1 for r in results if r[2] == s) for s in sorted({r[2] for r in results})},
            "req_per_s": round(len(ok) / span, 1) if span > 0 else None,
            "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1)}


def post(port: int, path: str, body: dict, key: str | None, timeout: float = 30.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("POST", path, json.dumps(body), headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data, dict(r.getheaders())


def run_load(port: int, path: str, body: dict, key: str | None, seconds: float, concurrency: int,
             max_requests: int, on_tick=None) -> list[tuple[float, float, int, str, str]]:
    """Send requests from ``concurrency`` threads until ``seconds`` or ``max_requests``.
    Returns (start, latency, status, bundle_version, replica) per request."""
    if seconds > 600 or max_requests > 1_000_000:
        raise ValueError("load runs are bounded: at most 600 s and 1,000,000 requests")
    results: list = []
    lock = threading.Lock()
    stop_at = time.time() + seconds
    payload = json.dumps(body)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.time() < stop_at:
            with lock:
                if len(results) >= max_requests:
                    return
            t0 = time.time()
            try:
                conn.request("POST", path, payload, headers)
                r = conn.getresponse()
                data = r.read()
                status = r.status
                version = json.loads(data).get("bundle_version", "") if status == 200 else data[:200].decode(errors="replace")
                replica = r.getheader("X-Genoray-Replica", "")
            except Exception as e:  # connection-level failure counts as a failed request
                status, version, replica = 0, repr(e), ""
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                results.append((t0, time.time() - t0, status, version, replica))
        conn.close()

    return run_threads(lambda _: worker(), concurrency, results, on_tick)


def run_threads(worker, concurrency: int, results: list, on_tick=None) -> list:
    """Run ``worker(i)`` for i in range(concurrency) on threads until all return, calling
    ``on_tick(results)`` every 50 ms meanwhile (a chaos test kills or swaps from there)."""
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if on_tick:
            on_tick(results)
        time.sleep(0.05)
    return results
