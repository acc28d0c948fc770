"""Growth of every stage with n (issue #28, ``bench_growth`` acceptance): wall time and peak memory
per process of each command at 250k, 1M and 4M x 64, on clustered and on unclustered vectors,
with the capacity plan's prediction beside each measurement.

Each stage runs in its own subprocess (``python bench_growth.py --child STAGE ...``) through the
real Python API, under ``--stage-timeout`` seconds (a stage past it is recorded as ``>limit`` and
the stages that need its output are skipped):

* ``store``: the synthetic store written in the real format (Parquet parts + ``store.json`` with
  sha256). It stands in for ``embed`` (no encoder runs); the vectors are labelled as the 64-dim
  3-mer ``kmer`` encoder's, so that publish and predict can load the bundle's encoder.
  ``clustered``: 256 Gaussian clusters (4 classes, 5% label noise); ``unclustered``: isotropic
  Gaussian vectors, label = sign of a noisy projection (IVF must scan many lists for recall);
* ``verify``: what the index path does before reading vectors: ``EmbeddingStore(verify=True)``
  (sha256 of every part, in the calling process) and the split count (the embed's seq_id dedup
  does not run on a written store; its cost is the same kind of driver pass);
* ``index_ray``: ``build_index(use_ray=True)`` on a local 2-CPU Ray (what ``genoray index --ray``
  runs); ``index_local``: ``build_index(use_ray=False)``;
* ``head``: ``train_head`` (index of ``index_local``); ``publish``: ``write_bundle`` to a local root;
* ``predict``: the index memory-mapped, 10k queries predicted in one batch (``predict_vectors``);
  its private memory (``Anonymous``, private anonymous pages, of ``/proc/self/smaps_rollup``) is reported beside RSS;
* ``sequences``, ``embed`` (opt-in: ``--stages sequences,embed``): ``n`` random DNA sequences of
  200-300 bases written as Parquet, then ``embed_sequences`` of the default k-mer encoder on a
  local 2-CPU Ray (what ``genoray embed`` runs), checked against the plan's embed stage (its
  driver and its largest encoding task);
* ``reindex``: +1% rows appended as a new part, then ``extend_index`` + ``train_head`` +
  ``write_bundle`` (the reindex night without its evaluation, with its head refitted: the plan's
  +1% night carries the head over, so the plan compared is its night plus its head fit).

Memory: ``driver`` = ``ru_maxrss`` of the stage's process; ``task`` = the largest RSS seen by
polling (psutil, every 0.2 s) the Ray worker processes descended from the driver (RSS includes the
object-store pages a worker touched; a polled peak can miss a spike shorter than 0.2 s), and
``task_private_mb`` the largest private anonymous memory of those workers (the recall tuning task
maps the index, so its RSS counts the lists its searches scanned);
``private_peak_mb`` / ``mapped_peak_mb`` = the stage's process's peak private anonymous memory
and peak file-backed (and shared) resident memory, sampled from ``/proc/self/smaps_rollup`` every
50 ms: ``driver`` counts both, so for a stage that maps the index (head, reindex, predict) the
private peak is what grows with what the process holds, the mapped peak what the page cache
lends it (printed as ``priv pk`` / ``map pk``).
Targets, 1M -> 4M (the last two sizes): memory <= 1.5x for every process whose input grows
(a process that searches the memory-mapped index, :data:`MAPPED_RSS`, is held to its private
memory and its RSS reported), head fit time <= 4x (linear).
Plan: :func:`genoray.index.capacity.estimate` with the per-core rate measured in the same run and
the machine's cores, every search priced at the nprobe the same run's ``index_local`` build tuned
(as ``genoray plan --index`` does; ``--default-nprobe``: at the plan's default); ratio = measured /
predicted (targets: memory 0.8-1.25, time 0.5-2). Each stage also records its process's CPU time
and the load average: on a shared machine wall time is inflated, CPU time less so.

    python bench/bench_growth.py [--sizes 250000,1000000,4000000 | --quick] [--modes clustered,unclustered]
                                 [--stage-timeout 900] [--json-out r.json] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DIM = 64
PART_ROWS = 125_000
QUERIES = 10_000
ID_BYTES = 8  # a synthetic seq_id: "s" + up to 7 digits (the plan's id_bytes; its default, 24, is a real store's)
STAGES = ("store", "verify", "index_ray", "index_local", "head", "publish", "predict", "reindex")
EMBED_STAGES = ("sequences", "embed")  # opt-in (--stages sequences,embed): the real embed of the k-mer encoder
NEEDS = {"verify": "store", "index_ray": "store", "index_local": "store", "head": "index_local",
         "publish": "head", "predict": "head", "reindex": "publish", "embed": "sequences"}
UNPLANNED = ("store", "sequences")  # inputs the bench writes: no stage of the plan
SEQ_LEN = (200, 300)  # the synthetic sequences' lengths, as bench_kmer's (the plan's k-mer rate)
MB = 2**20
PRIVATE_KEYS = ("task_private_mb", "private_mb", "private_peak_mb")
# (value, stage) pairs that count the pages of a memory-mapped index its searches touched: the
# acceptance's "search that maps the index", held to its private memory instead
MAPPED_RSS = {("driver_mb", "predict"), ("driver_mb", "head"), ("driver_mb", "reindex"), ("task_mb", "index_ray")}
SMAPS_EVERY_S = 0.05  # the private / mapped memory sampling period of every stage's process


def encoder():
    """The 64-dim k=3 spectrum encoder the synthetic vectors are labelled with."""
    from genoray.config import KmerConfig
    from genoray.encoders.kmer import KmerEncoder

    return KmerEncoder(KmerConfig(ks=(3,), gc=False, zcurve=False))


def vectors(mode: str, rows: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` vectors and labels of ``mode`` (clustered / unclustered), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    if mode == "clustered":
        centres = np.random.default_rng(1).normal(size=(256, DIM)).astype(np.float32)
        c = rng.integers(0, 256, size=rows)
        x = centres[c] + 0.6 * rng.standard_normal((rows, DIM), dtype=np.float32)
        y = np.array(list("abcd"))[c % 4]
        flip = rng.random(rows) < 0.05
        y[flip] = rng.choice(list("abcd"), size=int(flip.sum()))
    else:
        x = rng.standard_normal((rows, DIM), dtype=np.float32)
        y = np.where(x[:, 0] + 0.5 * rng.standard_normal(rows) > 0, "a", "b")
    return x, y


def write_part(root: Path, mode: str, index: int, start: int, rows: int, prefix: str):
    """One Parquet part of the store (rows ``start..start+rows``); returns its StorePart."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genoray.embedding import store as s
    from genoray.infra.artifacts import sha256_file

    x, y = vectors(mode, rows, [7, start])
    ids = [f"{prefix}{i}" for i in range(start, start + rows)]
    t = pa.table({s.SEQ_ID: pa.array(ids), s.LABEL: pa.array(y.tolist()), s.DOMAIN: pa.nulls(rows, pa.string()),
                  s.SPLIT: pa.array(["train"] * rows), s.SEQ_HASH: pa.array(ids),
                  s.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)},
                 schema=s.embedding_schema(DIM))
    f = f"shards/part-{index:05d}.parquet"
    pq.write_table(t, root / f)
    return s.StorePart(file=f, rows=rows, sha256=sha256_file(root / f), source=f"synthetic:{mode}")


def stage_store(w: Path, n: int, mode: str) -> dict:
    """Write the store of ``n`` rows (stands in for embed)."""
    from genoray.embedding import store as s

    (w / "store" / "shards").mkdir(parents=True)
    parts = tuple(write_part(w / "store", mode, i, a, min(PART_ROWS, n - a), "s")
                  for i, a in enumerate(range(0, n, PART_ROWS)))
    enc = encoder()
    s.write_encoder_record(w / "store", s.EncoderRecord(requested=enc.spec(), fitted=enc.spec()))
    s.write_manifest(w / "store", s.StoreManifest(
        format_version=s.StoreManifest.FORMAT_VERSION, encoder=enc.spec(), fingerprint=enc.fingerprint, dim=DIM,
        status="complete", rows=n, counts=s.StoreCounts(read=n, accepted=n, rejected=0, written=n), parts=parts))
    return {}


def stage_sequences(w: Path, n: int, mode: str) -> dict:
    """The input of ``embed``: ``n`` random DNA sequences of :data:`SEQ_LEN` bases as Parquet
    (``id, sequence, label, split``), in parts of :data:`PART_ROWS` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (w / "sequences").mkdir()
    for i, a in enumerate(range(0, n, PART_ROWS)):
        rows = min(PART_ROWS, n - a)
        rng = np.random.default_rng([11, a])
        lens = rng.integers(SEQ_LEN[0], SEQ_LEN[1] + 1, size=rows)
        bases = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, size=int(lens.sum()))].tobytes().decode()
        cut = np.concatenate([[0], np.cumsum(lens)])
        seqs = [bases[cut[j]:cut[j + 1]] for j in range(rows)]
        pq.write_table(pa.table({"id": [f"q{j}" for j in range(a, a + rows)], "sequence": seqs,
                                 "label": ["ab"[j % 2] for j in range(rows)], "split": ["train"] * rows}),
                       w / "sequences" / f"part-{i:05d}.parquet")
    return {}


def stage_embed(w: Path, n: int, mode: str) -> dict:
    """``embed_sequences`` of the default k-mer encoder (the plan's ``kmer`` rate) on a local 2-CPU
    Ray, as ``genoray embed`` runs it."""
    import ray

    from genoray.embedding.job import embed_sequences
    from genoray.encoders.kmer import KmerEncoder

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * MB)
    try:
        rep = embed_sequences(w / "sequences", w / "embedded", KmerEncoder(), use_ray=True)
    finally:
        ray.shutdown()
    return {"read": rep.read, "written": rep.written, "rejected": sum(rep.rejected.values())}


def stage_verify(w: Path, n: int, mode: str) -> dict:
    """Open the store verifying every part's sha256, and count the index split (the driver passes)."""
    from genoray.embedding.store import EmbeddingStore
    from genoray.index.capacity import split_rows

    return {"rows": split_rows(EmbeddingStore(w / "store", verify=True), "train")}


def stage_index_ray(w: Path, n: int, mode: str) -> dict:
    """``build_index`` on a local 2-CPU Ray, as ``genoray index --ray`` runs it."""
    import ray

    from genoray.config import IndexConfig
    from genoray.index import build_index

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * MB)
    try:
        rep = build_index(w / "store", w / "index_ray", IndexConfig(split="train"), use_ray=True)
    finally:
        ray.shutdown()
    return {"factory": rep.factory, "recall": rep.recall_at_10}


def stage_index_local(w: Path, n: int, mode: str) -> dict:
    """``build_index`` in this process."""
    from genoray.config import IndexConfig
    from genoray.index import build_index

    rep = build_index(w / "store", w / "index_local", IndexConfig(split="train"), use_ray=False)
    return {"factory": rep.factory, "recall": rep.recall_at_10, "search_params": rep.search_params}


def stage_head(w: Path, n: int, mode: str) -> dict:
    """``train_head`` on the local index."""
    from genoray.pipeline.train import train_head

    r = train_head(w / "store", w / "index_local", w / "head")
    return {"rows_used": r["rows_used"], "chosen": r["chosen"], "fit_nprobe": r["fit_nprobe"]}


def stage_publish(w: Path, n: int, mode: str) -> dict:
    """``write_bundle`` of the local index and the head to a local bundle root."""
    from genoray.pipeline.publish import write_bundle

    return {"version": write_bundle(w / "bundles", w / "index_local", w / "head", version="v1")}


def stage_predict(w: Path, n: int, mode: str) -> dict:
    """10k queries predicted in one batch with the index memory-mapped."""
    from genoray.heads.persist import load_head
    from genoray.index import VectorIndex
    from genoray.predict.predictor import predict_vectors

    index = VectorIndex.load(w / "index_local", mmap=True)
    head = load_head(w / "head").attach_index(index)
    x, _ = vectors(mode, QUERIES, [9, n])
    predict_vectors(index, head, x)
    private, _ = smaps_rollup()  # private anonymous pages at the end: this process's heap, not the mapped index
    return {"private_mb": private / MB}


def stage_reindex(w: Path, n: int, mode: str) -> dict:
    """+1% rows appended, ``extend_index`` + ``train_head`` + ``write_bundle`` (a reindex night)."""
    import dataclasses

    from genoray.bundle import version_dir
    from genoray.bundle.manifest import INDEX_DIR
    from genoray.config import IndexConfig, ReindexConfig
    from genoray.embedding import store as s
    from genoray.evaluation.shift import drift_rule
    from genoray.index import build_index
    from genoray.index.delta import RetrainNeeded, extend_index
    from genoray.pipeline.publish import write_bundle
    from genoray.pipeline.train import train_head

    m = s.read_manifest(w / "store")
    new = max(1, n // 100)
    part = write_part(w / "store", mode, len(m.parts), m.rows, new, "new")
    c = m.counts
    s.write_manifest(w / "store", dataclasses.replace(m, parts=(*m.parts, part), rows=m.rows + new, counts=(
        dataclasses.replace(c, read=c.read + new, accepted=c.accepted + new, written=c.written + new))))
    rc = ReindexConfig()
    try:
        rep = extend_index(version_dir(w / "bundles", "v1") / INDEX_DIR, w / "store", w / "index2", rc.recall_floor,
                           IndexConfig(split="train"), drift=drift_rule(rc.shift_alpha))
        how = "extend"
    except RetrainNeeded:  # a Flat index (small n): the night rebuilds, as genoray.pipeline.reindex does
        shutil.rmtree(w / "index2", ignore_errors=True)
        rep, how = build_index(w / "store", w / "index2", IndexConfig(split="train")), "full"
    train_head(w / "store", w / "index2", w / "head2")
    write_bundle(w / "bundles", w / "index2", w / "head2", version="v2")
    return {"recall": rep.recall_at_10, "delta_rows": new, "index": how, "search_params": rep.search_params}


def poll_ray_workers(peak: dict, stop: threading.Event) -> None:
    """Record the largest RSS, and the largest private anonymous memory (:func:`smaps_rollup`), of
    any Ray worker process below this one until ``stop``: a task that maps the index (the recall
    tuning) counts the pages its search touched in its RSS."""
    import psutil

    me = psutil.Process()
    while not stop.wait(0.2):
        try:
            kids = me.children(recursive=True)
        except psutil.Error:
            continue
        for p in kids:
            try:
                if "default_worker" in " ".join(p.cmdline()) or p.name().startswith("ray::"):
                    peak["task"] = max(peak["task"], p.memory_info().rss)
                    peak["task_private"] = max(peak["task_private"], smaps_rollup(p.pid)[0])
            except (psutil.Error, OSError):
                pass


def smaps_rollup(pid: int | str = "self") -> tuple[int, int]:
    """(private anonymous bytes, file-backed and shared resident bytes) of a process (this one by
    default) now, from ``/proc/<pid>/smaps_rollup``: ``Anonymous`` (heap, numpy arrays, FAISS's allocations: what an
    index read without mmap is in) and ``Rss - Anonymous`` (resident pages of mapped files, such as a
    memory-mapped index and Arrow id tables, and of shared memory: page cache others can share)."""
    rss = anon = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Anonymous:"):
                anon = int(line.split()[1]) * 1024
    return anon, rss - anon


def poll_smaps(peak: dict, stop: threading.Event, every: float = SMAPS_EVERY_S) -> None:
    """Record this process's peak private anonymous and peak file-backed resident memory
    (:func:`smaps_rollup`) every ``every`` seconds until ``stop``, and once more at the end."""
    while True:
        anon, mapped = smaps_rollup()
        peak["private"], peak["mapped"] = max(peak["private"], anon), max(peak["mapped"], mapped)
        peak["samples"] += 1
        if stop.wait(every):
            anon, mapped = smaps_rollup()
            peak["private"], peak["mapped"] = max(peak["private"], anon), max(peak["mapped"], mapped)
            return


def child(stage: str, w: Path, n: int, mode: str) -> None:
    """Run one stage in this (fresh) process and print its measurements as the last stdout line.

    ``private_peak_mb`` / ``mapped_peak_mb``: this process's peak private anonymous memory and
    peak file-backed resident memory during the stage, sampled every :data:`SMAPS_EVERY_S` s
    (:func:`poll_smaps`; a spike shorter than that can be missed); ``driver_mb`` (``ru_maxrss``)
    counts both."""
    peak = {"task": 0, "task_private": 0}
    mem = {"private": 0, "mapped": 0, "samples": 0}
    stop = threading.Event()
    poller = threading.Thread(target=poll_ray_workers, args=(peak, stop), daemon=True)
    sampler = threading.Thread(target=poll_smaps, args=(mem, stop), daemon=True)
    poller.start()
    sampler.start()
    t0 = time.perf_counter()
    out = globals()[f"stage_{stage}"](w, n, mode)
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    sampler.join()
    u = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**out, "wall_s": wall, "driver_mb": u.ru_maxrss / 1024, "task_mb": peak["task"] / MB or None,
                      "task_private_mb": peak["task_private"] / MB or None,
                      "private_peak_mb": mem["private"] / MB, "mapped_peak_mb": mem["mapped"] / MB,
                      "smaps_samples": mem["samples"], "cpu_s": u.ru_utime + u.ru_stime,
                      "load_avg": os.getloadavg()[0]}))


def run_stage(stage: str, w: Path, n: int, mode: str, timeout: float) -> dict:
    """``stage`` in a subprocess under ``timeout`` seconds: its result, or ``status`` timeout / error."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", stage, str(w), str(n), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and every process it started (Ray's too)
        proc.communicate()
        return {"status": "timeout", "wall_s": time.perf_counter() - t0}
    if proc.returncode:
        return {"status": "error", "wall_s": time.perf_counter() - t0, "error": err.strip()[-800:]}
    return {"status": "ok", **json.loads(out.strip().splitlines()[-1])}


def predicted(plan, stage: str) -> tuple[float, float, float | None]:
    """The plan's (seconds, driver bytes, largest task bytes) for a bench stage."""
    from genoray.index.stage_costs import PIPELINE_START_S, START_S

    st = plan.stages
    ix = st["index"]
    if stage == "index_ray":
        return ix["seconds"], ix["peak_driver_bytes"], ix["peak_worker_bytes"]
    if stage == "index_local":
        return ix["single_process_s"] + START_S, ix["peak_single_process_bytes"], None
    if stage == "predict":
        sv = st["serve"]
        return sv["seconds"] + QUERIES * sv["batch_query_s"], sv["private_bytes"], None
    if stage == "reindex":  # stage_reindex refits the head; the plan's +1% night carries it over: add the refit
        hd, ri = st["head"], st["reindex"]
        return ri["seconds"] + hd["seconds"] - PIPELINE_START_S, max(ri["peak_bytes"], hd["peak_bytes"]), None
    if stage == "embed":  # the default k-mer encoder's vectors (its dim, 350), not the store's DIM
        from genoray.encoders.kmer import KmerEncoder
        from genoray.index.capacity import estimate

        e = estimate(plan.n, KmerEncoder().dim, encoder="kmer", partition_rows=PART_ROWS).stages["embed"]
        return e["seconds"], e["peak_driver_bytes"], e["peak_task_bytes"]
    key = {"store": "embed", "sequences": "embed", "verify": "dedup"}.get(stage, stage)
    return st[key]["seconds"], st[key]["peak_bytes"], None


def ratio(meas, pred) -> float | None:
    """measured / predicted, or None when either is missing."""
    return meas / pred if meas and pred else None


def fmt(x, spec: str = ".0f") -> str:
    """``x`` formatted, '-' for None."""
    return "-" if x is None else format(x, spec)


def plan_ok(r: dict, t: float | None, mem: float | None) -> str:
    """PASS when the plan is within 2x of the time and 25% of every measured memory
    (error = (predicted - measured) / measured), FAIL otherwise, '' when nothing was measured."""
    if r["status"] != "ok" or t is None:
        return ""
    pairs = [(mem, r["plan_mb"]), (r.get("task_mb"), r["plan_task_mb"])]
    ok = 0.5 <= t / r["plan_s"] <= 2 and all(abs(p - m) <= 0.25 * m for m, p in pairs if m and p)
    return "PASS" if ok else "FAIL"


def report(results: list[dict], sizes: list[int]) -> list[str]:
    """The table: stage x size, measured beside planned, and the growth targets."""
    lines = [f"{'mode':<11} {'stage':<11} {'n':>9} {'time s':>8} {'plan s':>8} {'t ratio':>7} {'driver MB':>9} "
             f"{'plan MB':>8} {'m ratio':>7} {'task MB':>8} {'plan MB':>8} {'m ratio':>7} {'plan':<4} "
             f"{'priv pk':>7} {'map pk':>7}"]
    for r in results:
        mem = r.get("private_mb") if r["stage"] == "predict" else r.get("driver_mb")
        t = r["wall_s"] if r["status"] == "ok" else None
        ts = fmt(t, ".1f") if r["status"] == "ok" else (f">{r['limit']:.0f}" if r["status"] == "timeout" else r["status"])
        lines.append(f"{r['mode']:<11} {r['stage']:<11} {r['n']:>9,} {ts:>8} {fmt(r['plan_s'], '.1f'):>8} "
                     f"{fmt(ratio(t, r['plan_s']), '.2f'):>7} {fmt(mem):>9} {fmt(r['plan_mb']):>8} "
                     f"{fmt(ratio(mem, r['plan_mb']), '.2f'):>7} {fmt(r.get('task_mb')):>8} "
                     f"{fmt(r['plan_task_mb']):>8} {fmt(ratio(r.get('task_mb'), r['plan_task_mb']), '.2f'):>7} "
                     f"{plan_ok(r, t, mem):<4} {fmt(r.get('private_peak_mb')):>7} {fmt(r.get('mapped_peak_mb')):>7}")
    lines.append("(predict: 'driver MB' is its private anonymous memory; its RSS is in the JSON; 'priv pk' / 'map pk': "
                 "the stage process's peak private anonymous / file-backed resident MB, sampled every 50 ms)")
    checks = [plan_ok(r, r["wall_s"], r.get("private_mb") if r["stage"] == "predict" else r.get("driver_mb"))
              for r in results if r["status"] == "ok" and r["stage"] not in UNPLANNED]
    lines.append(f"plan within 2x of time and 25% of memory (every measured process): "
                 f"{checks.count('PASS')} of {len(checks)} stage runs (store, sequences: inputs, not counted)")
    for n in dict.fromkeys(r["n"] for r in results):
        at_n = [(r, plan_ok(r, r["wall_s"], r.get("private_mb") if r["stage"] == "predict" else r.get("driver_mb")))
                for r in results if r["n"] == n and r["status"] == "ok" and r["stage"] not in UNPLANNED]
        fails = [f"{r['mode']} {r['stage']}" for r, v in at_n if v != "PASS"]
        lines.append(f"  at {n:,}: {len(at_n) - len(fails)} of {len(at_n)}" + (f"; FAIL: {', '.join(fails)}" if fails else ""))
    sizes = [n for n in sizes if any(r["n"] == n and r["status"] == "ok" for r in results)]
    if len(sizes) >= 2:
        a, b = sizes[-2], sizes[-1]
        lines.append(f"growth {a:,} -> {b:,} ({b / a:.0f}x rows): memory target <= 1.5x (every process but the mapped "
                     f"search), head time target <= {b / a:.0f}x")
        at = {(r["mode"], r["stage"], r["n"]): r for r in results}
        for mode in dict.fromkeys(r["mode"] for r in results):
            for stage in STAGES + EMBED_STAGES:
                lo, hi = at.get((mode, stage, a)), at.get((mode, stage, b))
                if not lo or not hi or lo["status"] != "ok":
                    continue
                cells = []
                for key in ("driver_mb", "task_mb", "task_private_mb", "private_mb", "private_peak_mb"):
                    if lo.get(key) and (hi.get(key) or hi["status"] != "ok"):
                        g = hi[key] / lo[key] if hi["status"] == "ok" else None
                        # a process that maps the index: its private memory is the target, its RSS
                        # (the pages its searches touched) is information; for the others, every value
                        target = key in PRIVATE_KEYS or (key, stage) not in MAPPED_RSS
                        ok = g is not None and g <= 1.5
                        cells.append(f"{key} x{fmt(g, '.2f')} {('PASS' if ok else 'FAIL') if target else '(info)'}")
                if stage == "head":
                    g = hi["wall_s"] / lo["wall_s"] if hi["status"] == "ok" else None
                    cells.append(f"time x{fmt(g, '.2f')} {'PASS' if g is not None and g <= b / a else 'FAIL'}")
                lines.append(f"  {mode:<11} {stage:<11} " + "; ".join(cells))
    return lines


def plan_for(n: int, gflops: float, probe_fraction: float = 0.0):
    """The capacity plan for ``n`` x :data:`DIM` on this machine at the measured per-core rate,
    every search priced at ``probe_fraction`` of the lists (0: the plan's default)."""
    from genoray.config import ClusterSpec, IndexConfig
    from genoray.index.capacity import estimate

    return estimate(n, DIM, IndexConfig(split="train"), ClusterSpec(gflops_per_core=gflops), encoder="kmer",
                    partition_rows=PART_ROWS, probe_fraction=probe_fraction, id_bytes=ID_BYTES)


def replan(results: list[dict], gflops: float, tuned: bool) -> list[dict]:
    """Every result annotated with the plan for its size; with ``tuned``, the plan of each
    (vectors, size) prices its searches at the nprobe its ``index_local`` build chose (as
    ``genoray plan --index`` does), else at the plan's default."""
    from genoray.index.factory import parse_factory

    probe = {(r["mode"], r["n"]): r["search_params"]["nprobe"] / parse_factory(r["factory"], DIM)["nlist"]
             for r in results if tuned and r["stage"] == "index_local" and "nprobe" in r.get("search_params", {})}
    return [annotate(r, plan_for(r["n"], gflops, probe.get((r["mode"], r["n"]), 0.0))) for r in results]


def annotate(r: dict, plan) -> dict:
    """``r`` with the plan's prediction for its stage."""
    ps, pm, pt = predicted(plan, r["stage"])
    r.update(plan_s=ps, plan_mb=pm / MB, plan_task_mb=pt / MB if pt else None)
    return r


def markdown(results: list[dict]) -> list[str]:
    """The per-stage rows as a Markdown table (for docs/capacity.md and docs/benchmarks.md)."""
    lines = ["| vectors | stage | n | time s | driver CPU s | plan s | time / plan | driver MB | plan MB | task MB | plan MB "
             "| plan |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mem = r.get("private_mb") if r["stage"] == "predict" else r.get("driver_mb")
        ok = r["status"] == "ok"
        t = fmt(r["wall_s"], ".1f") if ok else (f">{r['limit']:.0f}" if r["status"] == "timeout" else r["status"])
        lines.append(f"| {r['mode']} | {r['stage']}{' (private)' if r['stage'] == 'predict' else ''} | {r['n']:,} | {t} | "
                     f"{fmt(r.get('cpu_s') if ok else None, '.1f')} | "
                     f"{fmt(r['plan_s'], '.1f')} | {fmt(ratio(r['wall_s'] if ok else None, r['plan_s']), '.2f')} | "
                     f"{fmt(mem if ok else None)} | {fmt(r['plan_mb'])} | {fmt(r.get('task_mb') if ok else None)} | "
                     f"{fmt(r['plan_task_mb'])} | {plan_ok(r, r['wall_s'] if ok else None, mem)} |")
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, stage, w, n, mode = sys.argv
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        child(stage, Path(w), int(n), mode)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250000,1000000,4000000")
    ap.add_argument("--quick", action="store_true", help="sizes 50k, 100k, 200k")
    ap.add_argument("--modes", default="clustered,unclustered")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--stage-timeout", type=float, default=900.0)
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="stop starting stages after this many seconds in all (0: no limit); the rest are 'budget'")
    ap.add_argument("--json-out", help="write the results here (rewritten after every stage)")
    ap.add_argument("--from-json", help="print the table of earlier --json-out files (comma-separated: one table) "
                                        "beside today's plan; runs nothing")
    ap.add_argument("--markdown", action="store_true", help="with --from-json: also print a Markdown table")
    ap.add_argument("--default-nprobe", action="store_true",
                    help="plan every search at the plan's default nprobe, not at the one each build's tuning chose")
    ap.add_argument("--work", help="keep the files here (default: a temp dir, removed)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.from_json:
        results, sizes = [], []
        for f in args.from_json.split(","):  # each run replanned at its own per-core rate and tuned nprobe
            raw = json.loads(Path(f).read_text())
            results += replan(raw["results"], raw["gflops_per_core"], not args.default_nprobe)
            sizes += [n for n in raw["sizes"] if n not in sizes]
        print("\n".join(report(results, sorted(sizes))))
        if args.markdown:
            print("\n".join(markdown(results)))
        return
    from bench_index import measure_gflops_per_core

    sizes = [50_000, 100_000, 200_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    stages = [s for s in args.stages.split(",") if s]
    gflops = measure_gflops_per_core()
    print(f"faiss kNN rate now {gflops:.1f} GFLOP/s per core; {os.cpu_count()} cores; {DIM} dims", flush=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-growth-"))
    results: list[dict] = []
    t_start = time.perf_counter()
    try:
        for n in sizes:  # every mode at a size before the next size: a run cut short still compares modes
            plan = plan_for(n, gflops)
            for mode in [m for m in args.modes.split(",") if m]:
                w = work / f"{mode}-{n}"
                shutil.rmtree(w, ignore_errors=True)
                w.mkdir(parents=True)
                done: dict[str, str] = {}
                for stage in stages:
                    need = NEEDS.get(stage)
                    if args.budget_s and time.perf_counter() - t_start > args.budget_s:
                        r = {"status": "budget", "wall_s": 0.0}
                    elif need and done.get(need, "ok" if need not in stages else "missing") != "ok":
                        r = {"status": f"no {need}", "wall_s": 0.0}
                    else:
                        r = run_stage(stage, w, n, mode, args.stage_timeout)
                    done[stage] = r["status"]
                    r.update(mode=mode, stage=stage, n=n, limit=args.stage_timeout)
                    results.append(annotate(r, plan))
                    print(report([r], [])[1] + (f"  {r.get('error', '')[-300:]}" if r["status"] == "error" else ""),
                          flush=True)
                    if args.json_out:
                        Path(args.json_out).write_text(json.dumps({
                            "sizes": sizes, "dim": DIM, "gflops_per_core": gflops, "cores": os.cpu_count(),
                            "results": results}, indent=1))
                shutil.rmtree(w, ignore_errors=True)
        print("\n".join(report(replan(results, gflops, not args.default_nprobe), sizes)))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
