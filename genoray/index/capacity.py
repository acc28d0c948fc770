"""``plan``: predict what each stage needs before any work, and refuse what cannot fit.

One cost model, used by ``genoray plan`` and by :func:`genoray.index.build_index` (which
refuses before reading a vector when the build does not fit its memory budget; autofaiss's
``estimate_memory_required_for_index_creation`` is the idea). Per stage it predicts:

* **embed**: hours at a per-encoder rate (``kmer``: 28k sequences/s per core, measured by
  ``bench/bench_embed.py``; ``hf``: an assumed 1,000 sequences/s per GPU, 25 per core: no
  transformers encoder could be measured here, pass ``--embed-rate`` for yours);
* **index**: factory (:func:`genoray.index.factory.choose_factory`), nlist, bytes per vector, the
  training sample (:func:`~genoray.index.factory.train_sample_size`), peak memory of the quantizer training, of one
  add task (one store partition) and of one shard merge, and build hours across the nodes;
* **serve**: resident memory of one replica (index codes + ids table + quantizer + process),
  split into shard groups when one node cannot hold it, and the expected single-query latency;
* **head**: fit time and memory of a head fitted on a bounded sample (``HeadConfig.max_rows``
  rows, the config's value: one source of truth).

Memory is modelled as ``process base + bytes per row x rows + fixed parts`` with the constants
below, calibrated against measured peak RSS at 250k and 1M vectors (``bench/bench_index.py``
prints prediction beside measurement; docs/capacity.md states the error). Time is FLOPs over a
per-core rate: ``--gflops-per-core`` (default measured on the project machine when idle).
The start costs, rates and fixed working memory were refitted on ``bench/bench_growth.py``'s idle
1M runs and checked on its 4M and 250k runs (docs/capacity.md, "The refitted plan");
``bench/calibrate_plan.py`` re-measures the machine's own constants beside the plan's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genoray.config import ClusterSpec, EncoderChoice, HeadConfig, IndexConfig, PlanConfig, ReadConfig, ReindexConfig
from genoray.embedding.store import EmbeddingStore
from genoray.index import stage_costs
from genoray.index.factory import choose_factory, parse_factory, train_sample_size
from genoray.index.manifest import MANIFEST, IndexManifest, read_manifest
from genoray.index.stages import BATCH_ROWS, NPROBE_STEPS, count_split
from genoray.infra import fs
from genoray.infra.documents import read_document

MB = 2**20
GB = 2**30

PROCESS_BASE = 170 * MB        # python + numpy + pyarrow + faiss + genoray imported, measured
RAY_WORKER_BASE = 230 * MB     # a Ray worker process running the same imports
RAY_DRIVER = 180 * MB          # the build's driver on Ray (imports + Ray client; it holds only summaries):
                               # 178 MiB at 1M x 64 (bench_growth, both vector kinds), flat in n
ROW_META = 64                  # Arrow seq_id / label / split / hash strings per store row (read transiently)
ID_TABLE_ROW = 48              # resident id table per row: gid int64 + seq_id + label (Arrow, ~24 B ids)
SERVE_EXTRA = 200 * MB         # a serving replica's encoder, head, FastAPI and Serve's replica machinery
BATCH_WORK = 7.0               # peak bytes per byte of one decoded batch (BATCH_ROWS rows: Arrow batch, split
                               # filter, numpy, normalised copy, faiss add buffers, the Arrow pool it leaves);
                               # stages stream, so a partition's size no longer matters
WORK_SAMPLE = 3.4              # peak bytes per byte of the training sample (the scans' kept shares, the
                               # concatenated copy, k-means and residual buffers)
WORK_INDEX = 0.5               # extend: extra peak per byte of index codes (merge growth, loaded index for tuning)
# BATCH_WORK and WORK_SAMPLE are fitted to the peak RSS of the streamed build at 250k and 1M x 256
# (bench/bench_index.py: the peak is in the quantizer training; the two points fix a slope per sample byte
# and an intercept, whose split into batch and k-means buffers they cannot tell apart); checked at 250k and
# 1M x 350 (bench/bench_train.py). docs/capacity.md states the errors.
HEAD_WORK = 10.0               # head fit peak bytes per byte of its float32 sample (float64 copies, L-BFGS buffers,
                               # neighbour lists, OOD reference): fitted to bench/bench_growth.py at 50k-250k x 64
GFLOPS_PER_CORE = 25.0         # faiss sgemm rate per core (kmeans assignment, coarse quantisation)
READ_MB_S = 400.0              # Parquet embedding columns decoded per core, MB/s
SCAN_GB_S = 4.5                # inverted-list codes scanned per query per core, GB/s: fitted to bench_growth's
                               # unclustered 1M predict (10k queries at nprobe 1,536 of 4,096 lists, 2 cores)
LOCAL_WORK = 120 * MB          # the one-process build's and extend's fixed working memory beyond PROCESS_BASE (Arrow
                               # pool, FAISS thread buffers, recall queries and their exact truth): fitted at 1M x 64
OMP_EFFICIENCY = 0.5           # a one-process FAISS call (k-means, add) on c cores runs at OMP_EFFICIENCY x c cores'
                               # kNN rate: profiled at 1M x 64 on the 2-core machine, training and adds progressed at one
                               # core's rate while both threads ran (CPU 2x wall); measured at c = 2 only, assumed beyond
KMEANS_ITERS = 10              # faiss IVF coarse quantizer training default
LBFGS_PASSES = 160             # passes over the float64 sample of the head's logistic regressions (C grid + refit),
MEM_GB_S = 5.0                 # at this rate on one core: fitted to bench_growth's 1M head fits (both vector kinds:
                               # their wall time less start, store reads and searches, 1.3-1.8 s at 100k x 64)
EMBED_RATE = {"kmer": 28_000.0, "hf": 25.0}     # sequences/s per CPU core
EMBED_RATE_GPU = {"kmer": 0.0, "hf": 1_000.0}   # sequences/s per GPU (hf: assumed, not measured here)


STAGES = ("embed", "dedup", "index", "head", "publish", "transfer", "serve", "reindex")  # every stage the plan
# states time, peak memory, disk and bytes moved for (stage_costs.QUANTITIES); serve = a replica's cold start


class CapacityError(RuntimeError):
    """A stage does not fit the budget; the message names estimate and budget."""


def node_memory(cluster: ClusterSpec) -> int:
    """Memory per node in bytes (this machine's available memory when the spec gives none)."""
    return int(cluster.memory_per_node_mb * MB) if cluster.memory_per_node_mb > 0 else available_memory()


def node_cpus(cluster: ClusterSpec) -> int:
    """CPUs per node (this machine's cores when the spec gives none)."""
    return cluster.cpus_per_node or (os.cpu_count() or 1)


def available_memory() -> int:
    """MemAvailable of this machine in bytes (total RAM when /proc is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True)
class ShardSize:
    """What one index shard puts in a serving replica: ``mapped`` bytes (its FAISS file and
    re-rank vectors, memory-mapped: one copy per node in the page cache) and ``ids`` bytes (its
    id table as Arrow: the ``.arrow`` file, or an older Parquet table decoded at
    :data:`ID_TABLE_ROW` a row)."""

    mapped: int
    ids: int


def shard_sizes(index_dir: str | Path, locate: Callable[[str], str] | None = None) -> tuple[list[ShardSize], int]:
    """The :class:`ShardSize` of every shard of an index directory, and the bytes of the shared
    IVF quantizer every replica reads into memory (0 without one): the one measure the
    replica memory, the shard groups and their budgets use. ``index_dir`` may be a URI: the
    sizes are then asked of the object store (nothing is downloaded). ``locate(name)``: where
    a file of the index is stored when not under ``index_dir`` (a bundle's objects by digest)."""
    where = locate or (lambda f: fs.join(index_dir, f))
    m = read_manifest(index_dir) if locate is None else read_document(IndexManifest, where(MANIFEST))

    def size(f: str) -> int:
        return fs.info(where(f))[1]

    sizes = []
    for s in m.shards:
        ids = s.ntotal * ID_TABLE_ROW if s.ids.endswith(".parquet") else size(s.ids)
        sizes.append(ShardSize(sum(size(f) for f in s.sha256 if f != s.ids), ids))
    quantizer = size(m.trained.file) if m.shared_quantizer and m.trained else 0
    return sizes, quantizer


def replica_bytes(shards: list[ShardSize], quantizer: int, private: int, replicas_per_node: int,
                  mmap: bool = True, ids_mapped: bool = True) -> int:
    """Memory of one serving replica that holds ``shards``: the Ray worker and Serve
    (:data:`RAY_WORKER_BASE` + :data:`SERVE_EXTRA`), ``private`` bytes of its own (head and
    OOD scorer files), the quantizer, and the shards: with ``mmap`` their mapped files shared
    by ``replicas_per_node`` replicas (and the id tables too when ``ids_mapped``; a searcher of
    a shard group is charged them as its own, an upper bound), in full otherwise."""
    mapped = sum(s.mapped for s in shards)
    ids = sum(s.ids for s in shards)
    shared = (mapped + (ids if ids_mapped else 0)) if mmap else 0
    own = (mapped + ids) - shared
    return int(RAY_WORKER_BASE + SERVE_EXTRA + private + quantizer + own + shared / max(1, replicas_per_node))


@dataclass
class Plan:
    """Predicted needs of every stage (bytes and seconds; see :func:`format_plan`)."""

    n: int
    dim: int
    factory: str
    cluster: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    fits: bool = True
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict (what ``genoray plan --json`` prints)."""
        return asdict(self)


def planned_nprobe(nlist: int, probe_fraction: float) -> int:
    """The ``nprobe`` the plan prices an IVF search at: the smallest step of the recall
    tuning's walk (:data:`~genoray.index.stages.NPROBE_STEPS`) that covers ``probe_fraction``
    of the ``nlist`` lists (``0``: nlist / 256, at least 8; see
    :attr:`~genoray.config.PlanConfig.probe_fraction`), at most nlist; 0 without lists."""
    if not nlist:
        return 0
    if not probe_fraction:
        return min(nlist, max(8, nlist // 256))
    return min(nlist, next(p for p in NPROBE_STEPS if p >= probe_fraction * nlist - 1e-9))


def tuned_probe_fraction(index_dir: str | Path) -> float:
    """``nprobe / nlist`` of a built index's recall-tuned search parameters (its manifest's
    ``search_params``); 1.0 for an index without lists (Flat, HNSW: every search is priced whole)."""
    m = read_manifest(index_dir)
    nlist = parse_factory(m.factory, int(m.dim))["nlist"]
    return min(1.0, int(m.search_params["nprobe"]) / nlist) if nlist and "nprobe" in m.search_params else 1.0


def search_s(n: int, d: int, nlist: int, nprobe: int, per_vec: int, flops: float, hnsw: bool = False) -> float:
    """Seconds of one query on one thread: the coarse quantizer and ``nprobe / nlist`` of the
    codes for IVF, a graph walk of about 4,096 vectors for HNSW, every vector for Flat."""
    if hnsw:
        return 4096 * d * 2 / flops
    if not nlist:
        return n * d * 2 / flops
    return nlist * d * 2 / flops + nprobe / nlist * n * per_vec / (SCAN_GB_S * GB)


def estimate(n: int, d: int, cfg: IndexConfig | None = None, cluster: ClusterSpec | None = None,
             encoder: str = EncoderChoice.encoder, partition_rows: int = 100_000, embed_rate: float = 0.0,
             id_bytes: int = 24, head: HeadConfig | None = None,
             probe_fraction: float = PlanConfig.probe_fraction) -> Plan:
    """Predict every stage of embedding, indexing, serving and head fitting ``n`` x ``d``
    (``cfg``: the :class:`~genoray.config.IndexConfig`, whose ``recall_queries`` the recall
    tuning runs; ``head``: the :class:`~genoray.config.HeadConfig` whose ``max_rows`` and
    ``fit_scan_rows`` bound the head fit; defaults for both). Every search is priced at
    :func:`planned_nprobe` of ``probe_fraction``, the walk the recall tuning takes to it included."""

    cfg = cfg or IndexConfig()
    cl = cluster or ClusterSpec()
    mem, cpus, gpus = node_memory(cl), node_cpus(cl), cl.gpus_per_node
    flops = cl.gflops_per_core * 1e9
    factory = choose_factory(n, d, cfg)
    f = parse_factory(factory, d)
    nlist, code = f["nlist"], f["code_bytes"]
    per_vec = code + (8 if f["ivf"] else 0)
    quantizer = nlist * d * 4
    nprobe = planned_nprobe(nlist, probe_fraction)
    plan = Plan(n, d, factory, {**asdict(cl), "memory_per_node_bytes": mem, "cpus_per_node": cpus})

    # embed
    kind = "hf" if encoder.startswith("hf") else "kmer"  # other encoders: pass embed_rate
    rate = embed_rate or (EMBED_RATE_GPU[kind] * gpus if gpus and EMBED_RATE_GPU[kind] else EMBED_RATE[kind] * cpus)
    store_bytes = n * (d * 4 + ROW_META)
    part = min(n, partition_rows)
    embed_batch = BATCH_WORK * min(part, ReadConfig.batch_size) * (d * 4 + ROW_META)  # one read batch encoded
    embed_driver = PROCESS_BASE + stage_costs.DEDUP_RANGE + embed_batch  # or the one process without Ray
    embed_task = RAY_WORKER_BASE + embed_batch  # an encoding task: a Ray worker and its batch
    plan.stages["embed"] = {"encoder": encoder, "rate_per_node_seq_s": rate,
                            "rate_source": "given" if embed_rate else ("assumed" if kind == "hf" else "measured"),
                            "hours": n / (rate * cl.nodes) / 3600, "store_bytes": store_bytes,
                            "peak_driver_bytes": int(embed_driver), "peak_task_bytes": int(embed_task),
                            **stage_costs.stage(stage_costs.RAY_START_S + n / (rate * cl.nodes),  # a job on Ray
                                                max(embed_driver, embed_task), store_bytes, store_bytes, cpus)}
    plan.stages["dedup"] = stage_costs.dedup(n, store_bytes, part, READ_MB_S)

    # index build
    sample = train_sample_size(n, nlist, cfg.train_sample_cap)
    threads = max(1, int(cfg.add_cpus))  # what a Ray task's FAISS runs on (its whole CPUs, at least one)
    # Peak RSS of a process: its largest stage (the heap a stage frees is reused by the next; measured,
    # the streamed build peaks in the quantizer training at 250k and 1M). Stages stream a partition
    # BATCH_ROWS rows at a time: the batch, not the partition, is their working set.

    batch_work = BATCH_WORK * min(part, BATCH_ROWS) * (d * 4 + ROW_META)
    sample_work = WORK_SAMPLE * sample * d * 4 + quantizer * 2
    n_shards = max(1, cfg.shards or math.ceil(n / cfg.shard_size))
    shard_rows = math.ceil(n / n_shards)
    train_mem = RAY_WORKER_BASE + batch_work + sample_work + (sample * d * 4 if f["pq"] else 0)
    add_mem = RAY_WORKER_BASE + batch_work + part * (per_vec + ID_TABLE_ROW + (d * 2 if f["pq"] else 0)) + quantizer
    merge_mem = RAY_WORKER_BASE + shard_rows * (per_vec * 1.5 + ID_TABLE_ROW) + quantizer * 2
    worker_mem = max(train_mem, add_mem, merge_mem)  # one process may run every stage
    refine_disk = n * d * 2 if f["pq"] else 0
    index_bytes = n * per_vec + quantizer  # shards share one quantizer once loaded
    ids_bytes = n * (ID_TABLE_ROW - 24 + id_bytes)
    # the shards are merged list by list from the partition files (ivf_merge): no in-memory copy of
    # the index, whose pages the recall tuning maps once (WORK_INDEX is the extend's, which loads it)
    single_mem = PROCESS_BASE + LOCAL_WORK + batch_work + max(sample_work + (sample * d * 4 if f["pq"] else 0),
                                                 index_bytes + ids_bytes)
    train_flops = KMEANS_ITERS * sample * max(nlist, 1) * d * 2
    if f["pq"]:
        train_flops += 25 * sample * 256 * d * 2
    add_flops = n * (max(nlist, 1) * d * 2 + d * 8)
    if f["hnsw"]:
        add_flops = n * 400 * d * 2
    read_s = (3 * n * d * 4) / (READ_MB_S * MB)  # count + sample, add and exact-recall passes
    gpu_train = gpus > 0 and cfg.use_gpu and not (f["pq"] and code > 96)  # GPU IVFPQ codes are <= 96 B
    train_s = train_flops / (flops * (200 if gpu_train else threads))  # one Ray task
    total_cores = min(cpus * cl.nodes, math.ceil(n / max(part, 1)) * threads)  # tasks of one partition each
    add_s = add_flops / (flops * total_cores) + read_s / total_cores
    queries = cfg.recall_queries
    exact_s = queries * n * d * 2 / (flops * total_cores) + n * d * 4 / (READ_MB_S * MB) / total_cores
    # the tuning searches every query at each step of its walk up to the chosen nprobe (HNSW: 12 efSearch values)
    walk = [p for p in NPROBE_STEPS if p <= nprobe] if nlist else [0] * (12 if f["hnsw"] else 1)
    tune_s = exact_s + queries * sum(search_s(n, d, nlist, p, per_vec, flops, f["hnsw"]) for p in walk) / threads
    merge_s = n * per_vec / (500 * MB) / min(n_shards, cl.nodes)
    workers_per_node = max(0, min(int(cpus / max(cfg.add_cpus, 0.01)), int(mem * 0.8 // add_mem)))
    plan.stages["index"] = {
        "factory": factory, "nlist": nlist, "code_bytes": code, "bytes_per_vector": per_vec,
        "train_sample": sample, "points_per_centroid": sample / nlist if nlist else None, "train_on_gpu": gpu_train,
        "shards": n_shards, "partition_rows": part, "partitions": math.ceil(n / max(part, 1)),
        "add_workers_per_node": workers_per_node,
        "peak_train_bytes": int(train_mem), "peak_add_worker_bytes": int(add_mem),
        "peak_merge_worker_bytes": int(merge_mem), "peak_worker_bytes": int(worker_mem),
        "peak_driver_bytes": RAY_DRIVER,
        "peak_single_process_bytes": int(single_mem), "refine_disk_bytes": refine_disk,
        "train_s": train_s, "add_s": add_s, "merge_s": merge_s, "tune_s": tune_s,
        "build_hours": (train_s + add_s + merge_s + tune_s) / 3600,
        "single_process_s": (train_flops + add_flops) / (flops * max(1.0, cpus * OMP_EFFICIENCY))
        + read_s / cpus + tune_s * threads / cpus + n * per_vec / (500 * MB), "task_threads": threads,
        **stage_costs.stage(stage_costs.RAY_START_S + train_s + add_s + merge_s + tune_s, worker_mem, index_bytes + ids_bytes + refine_disk,
                            3 * store_bytes + index_bytes + ids_bytes, total_cores),
    }

    # serving: one replica per shard group, each must fit in 80% of a node
    whole = [ShardSize(n * per_vec, ids_bytes)]
    replica = replica_bytes(whole, quantizer, 0, 1, mmap=False)  # one replica, the whole index in its memory
    groups = 1
    while replica_bytes([ShardSize(n * per_vec // groups, ids_bytes // groups)], quantizer, 0, 1, mmap=False) \
            > 0.8 * mem and groups < 4096:
        groups *= 2
    per_group = replica_bytes([ShardSize(n * per_vec // groups, ids_bytes // groups)], quantizer, 0, 1, mmap=False)
    scanned = (nprobe / nlist * n * per_vec / groups) if nlist else (n * per_vec / groups if not f["hnsw"] else 0)
    latency_s = (nlist * d * 2) / flops + scanned / (SCAN_GB_S * GB) + (4096 * d * 2 / flops if f["hnsw"] else 0)
    bundle_bytes = index_bytes + ids_bytes + refine_disk
    private = stage_costs.ANON_BASE + quantizer + n * stage_costs.GID_BYTES  # the codes and the id table stay mapped
    per_query = search_s(n, d, nlist, nprobe, per_vec, flops) if nlist \
        else n * d * 2 / flops  # exact (Flat) below the IVF threshold
    plan.stages["serve"] = {**stage_costs.cold_start(bundle_bytes, private, replica, per_query, cpus),
                            "replica_bytes": int(replica), "shard_groups": groups, "replica_bytes_per_group": int(per_group),
                            "index_bytes": int(index_bytes), "ids_bytes": int(ids_bytes), "nprobe": nprobe,
                            "probe_fraction": nprobe / nlist if nlist else 1.0,
                            "query_latency_ms": latency_s * 1000 + 1.0}

    # head: bounded sample; kNN vote through the index, logistic regression by L-BFGS over the sample
    hc = head or HeadConfig()
    hs = min(n, hc.max_rows)
    searches = min(hs, hc.ood_reference_rows) + hc.val_fraction * hs  # OOD reference + validation votes
    fit_probe = max(1, min(nprobe, nlist * hc.fit_scan_rows // max(n, 1))) if nlist else 0  # heads.common.fit_nprobe
    fit_query = search_s(n, d, nlist, fit_probe, per_vec, flops) if nlist else per_query
    head_read = 2 * n * (d * 4 + ROW_META) / (READ_MB_S * MB)  # the sample's and the OOD rows' store passes
    head_linear = LBFGS_PASSES * hs * d * 8 / (MEM_GB_S * GB)  # float64 passes of the C grid + refit, one core
    plan.stages["head"] = {"sample_rows": hs, "peak_bytes": int(stage_costs.PIPELINE_BASE + hs * d * 4 * HEAD_WORK
                                                             + index_bytes + ids_bytes),  # index loaded whole
                           "seconds": stage_costs.PIPELINE_START_S + head_read + searches * fit_query / cpus + head_linear,
                           "read_s": head_read, "search_s": searches * fit_query / cpus, "linear_s": head_linear,
                           "fit_nprobe": fit_probe}
    plan.stages["head"].update(stage_costs.stage(plan.stages["head"]["seconds"], plan.stages["head"]["peak_bytes"],
                                                 hs * d * 8, 2 * store_bytes, cpus))
    plan.stages["publish"] = stage_costs.publish(bundle_bytes, index_bytes, ids_bytes)
    new_fraction = 0.01  # a +1% night: its delta shard and id table are the new objects; a refitted head too
    refit = new_fraction > ReindexConfig.head_refit_fraction
    night_new = int(new_fraction * (index_bytes + ids_bytes + refine_disk)) + (hs * d * 8 if refit else 0)
    plan.stages["transfer"] = stage_costs.transfer(bundle_bytes, PROCESS_BASE, night_new)
    extend_peak = int(PROCESS_BASE + LOCAL_WORK + batch_work + index_bytes * (1 + WORK_INDEX) + ids_bytes)
    plan.stages["reindex"] = stage_costs.reindex(
        n, d, new_fraction, add_s, tune_s - exact_s * (1 - new_fraction) + plan.stages["dedup"]["seconds"],
        plan.stages["head"],
        stage_costs.publish(bundle_bytes, index_bytes, ids_bytes, night_new), extend_peak, refit)

    limit = 0.8 * mem
    checks = [("one build worker (training sample, a partition and a shard merge)", worker_mem),
              ("one serving replica (per shard group)", per_group)]
    for what, need in checks:
        if need > limit:
            plan.fits = False
            plan.problems.append(f"{what} needs {human(need)}, over the budget of {human(limit)} per node "
                                 f"(80% of {human(mem)})")
    if workers_per_node == 0 and not any("build worker" in p for p in plan.problems):
        plan.fits = False
        plan.problems.append(f"no add task fits a node ({human(add_mem)} each, {human(limit)} usable)")
    return plan


def plan_store(store_path, cfg=None, cluster: ClusterSpec | None = None, **kw) -> Plan:
    """:func:`estimate` for an existing embedding store (rows of ``cfg.split``, dim, encoder,
    partition size and id length read from its manifest)."""

    cfg = cfg or IndexConfig()
    store = EmbeddingStore(store_path, verify=False)
    parts = store.manifest.parts
    n = split_rows(store, cfg.split)
    spec = store.encoder_spec if isinstance(store.encoder_spec, dict) else {}
    enc = "hf" if str(spec.get("type", "kmer")).startswith("hf") else str(spec.get("type", "kmer"))
    part = max((p.rows for p in parts), default=1)
    return estimate(n, store.dim, cfg, cluster, encoder=enc, partition_rows=min(part, 250_000), **kw)


def plan_index(index_dir: str | Path, cfg: IndexConfig | None = None, cluster: ClusterSpec | None = None,
               **kw) -> Plan:
    """:func:`estimate` for a built index: its rows, dim and factory, every search priced at its
    tuned ``nprobe`` (:func:`tuned_probe_fraction`) unless ``probe_fraction`` is given."""
    m = read_manifest(index_dir)
    kw["probe_fraction"] = kw.get("probe_fraction") or tuned_probe_fraction(index_dir)
    return estimate(m.ntotal, m.dim, dataclasses.replace(cfg or IndexConfig(), index_type=m.factory), cluster, **kw)


def split_rows(store, split: str | None) -> int:
    """Rows of ``split`` in a store, reading only its split column."""

    if split is None:
        return store.rows
    return sum(count_split(str(store.path), p.file, split) for p in store.manifest.parts)


def check_fits(plan: Plan) -> None:
    """Raise :class:`CapacityError` naming estimate and budget when the plan does not fit."""
    if not plan.fits:
        raise CapacityError(f"{plan.n} x {plan.dim} ({plan.factory}) does not fit: " + "; ".join(plan.problems)
                            + ". Use more or larger nodes, more shards (--shards), a smaller memory budget for "
                              "the codes (--memory-budget-mb picks PQ), or smaller store partitions.")


def human(b: float) -> str:
    """Bytes as a short human-readable size (``1.5 GiB``)."""
    for unit, size in (("TiB", 2**40), ("GiB", GB), ("MiB", MB)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b / 1024:.0f} KiB"


def hours(s: float) -> str:
    """Seconds as a short duration (seconds, minutes or hours)."""
    return f"{s / 3600:.2f} h" if s >= 3600 else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s")


def format_plan(plan: Plan) -> str:
    """The plan as a short human-readable table."""
    e, ix, sv, hd = (plan.stages[k] for k in ("embed", "index", "serve", "head"))
    c = plan.cluster
    lines = [
        (f"plan for {plan.n:,} x {plan.dim} on {c['nodes']} node(s) x {human(c['memory_per_node_bytes'])}, "
        f"{c['cpus_per_node']} CPUs, {c['gpus_per_node']} GPUs; fits: {'yes' if plan.fits else 'NO'}"),
        (f"embed   {e['encoder']}: {hours(e['hours'] * 3600)} at {e['rate_per_node_seq_s']:,.0f} seq/s per node "
        f"({e['rate_source']}); store {human(e['store_bytes'])}"),
        f"index   {ix['factory']}: nlist {ix['nlist']}, {ix['bytes_per_vector']} B/vector, train sample "
        f"{ix['train_sample']:,}" + (f" ({ix['points_per_centroid']:.0f}/centroid, {'GPU' if ix['train_on_gpu'] else 'CPU'})"
                                     if ix["nlist"] else "") + f", {ix['shards']} shard(s), {ix['partitions']} partitions",
        (f"        peak per worker: train {human(ix['peak_train_bytes'])}, add {human(ix['peak_add_worker_bytes'])} "
        f"({ix['add_workers_per_node']}/node), merge {human(ix['peak_merge_worker_bytes'])}; one process: "
        f"{human(ix['peak_single_process_bytes'])}"),
        (f"        build {hours(ix['build_hours'] * 3600)} (train {hours(ix['train_s'])}, add {hours(ix['add_s'])}, "
        f"merge {hours(ix['merge_s'])}, recall tuning {hours(ix['tune_s'])}); one process {hours(ix['single_process_s'])}"),
        (f"serve   replica {human(sv['replica_bytes'])} whole; {sv['shard_groups']} shard group(s) of "
        f"{human(sv['replica_bytes_per_group'])}; ~{sv['query_latency_ms']:.1f} ms per query "
        + (f"(nprobe {sv['nprobe']}, {sv['probe_fraction']:.2%} of the lists)" if sv["nprobe"] else "(HNSW)" if "HNSW" in plan.factory else "(exact)")),
        f"head    sample {hd['sample_rows']:,} rows: {human(hd['peak_bytes'])}, {hours(hd['seconds'])}"
        + (f" (its searches at nprobe {hd['fit_nprobe']})" if hd["fit_nprobe"] else ""),
    ]
    lines.append(f"{'stage':<9} {'time':>9} {'peak memory':>12} {'disk':>10} {'moved':>10} {'threads':>7}")
    lines += [f"{k:<9} {hours(st['seconds']):>9} {human(st['peak_bytes']):>12} {human(st['disk_bytes']):>10} "
              f"{human(st['moved_bytes']):>10} {st['threads']:>7}" for k, st in ((k, plan.stages[k]) for k in STAGES)]
    lines += [f"PROBLEM {p}" for p in plan.problems]
    return "\n".join(lines)
