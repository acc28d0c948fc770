"""``build_index``: one FAISS index over a store's rows, built per store partition (on Ray or in
one process; both run the same stage functions and give identical files).

The index type follows the corpus (:mod:`genoray.index.factory`); PQ codes are re-ranked from
stored float16 vectors (memory-mapped, not resident) so the recall target is reached.

Stages:

0. **plan**: the store's parts are verified (sha256) by parallel tasks, the split's rows are taken
   from the per-part counts of ``store.json``; :func:`genoray.index.capacity.estimate` predicts
   peak memory per worker (and of one process); the build refuses before any work when it does
   not fit ``build_memory_mb`` (``0``: the smallest Ray node's memory on Ray, this machine's otherwise).
1. **scan** (one task per store partition): row count of the split, a Bernoulli training
   sample sized from nlist (:func:`genoray.index.factory.train_sample_size`: at least 39 points per
   centroid) and candidate recall queries.
2. **train** (one task, on a GPU when FAISS sees one, CPU otherwise): the coarse quantizer and
   codec, once. The trained empty index is written to ``trained.faiss`` and, on Ray, put in the
   object store once for every add task.
3. **add** (one task per partition, ``add_cpus`` CPUs each): rows get global ids
   ``gid_start + i`` (int64), are added to a copy of the trained index and written to
   ``parts/`` with their id table (gid, seq_id, label); a ``.done.json`` marker written last
   makes a rerun skip the partition. Ray retries a task whose worker dies.
4. **merge** (one task per shard): a shard is a contiguous run of partitions, so it holds a
   contiguous gid range; its partitions' inverted lists are merged into one index that shares
   the trained quantizer.
5. **recall**: exact top-10 of held-out queries per partition (:mod:`genoray.index.exact`), then ``nprobe`` (and
   for PQ the re-rank depth ``k_factor``) tuned to the smallest values reaching
   ``target_recall``. When no setting reaches it the build fails and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genoray.config import ClusterSpec, IndexConfig
from genoray.embedding.store import EmbeddingStore
from genoray.index.calibration import CalibrationSet, write_calibration
from genoray.index.capacity import CapacityError, check_fits, estimate, human
from genoray.index.exact import exact_topk
from genoray.index.factory import choose_factory, train_sample_size
from genoray.index.manifest import (
    MANIFEST,
    PARTS,
    TRAINED,
    TRAINED_RECORD,
    BuildInfo,
    IndexManifest,
    IndexPartition,
    RecallReport,
    TrainedIndex,
    write_manifest,
)
from genoray.index.stages import (
    DONE,
    PARTITION_ROWS,
    _Local,
    _pick_queries,
    _Ray,
    add_part,
    count_split,
    merge_shard,
    part_marker,
    scan_part,
    train_template,
    tune_index,
)
from genoray.infra import fs
from genoray.infra.rerun import guard_rerun
from genoray.infra.staging import clear_shared, mark_shared

log = logging.getLogger(__name__)


class RecallNotReached(RuntimeError):
    """No search setting within the budget reaches the recall target."""


@dataclass
class IndexReport:
    """What :func:`build_index` (or :func:`~genoray.index.delta.extend_index`) built: factory,
    shards, rows, dim, recall@10, search params, seconds, and how the build ran (training
    sample, partitions, resumed partitions, add nodes, peak worker RSS, the plan's prediction)."""

    path: str
    factory: str
    shards: int
    ntotal: int
    dim: int
    recall_at_10: float
    search_params: dict[str, int]
    gpu_used: bool
    seconds: float
    train_sample: int = 0
    partitions: int = 0
    resumed_partitions: int = 0
    add_nodes: list[str] = field(default_factory=list)
    peak_worker_rss_mb: float = 0.0
    predicted: dict[str, Any] = field(default_factory=dict)


def _template_key(factory: str, d: int, sample_n: int, cfg: IndexConfig, store) -> str:
    """What the trained index depends on: a matching key lets a rerun reuse it."""
    return f"{factory}|{d}|{sample_n}|{cfg.seed}|{cfg.split}|{store.fingerprint}|" + \
        ",".join(p.sha256 for p in store.manifest.parts)


def partition(p: dict[str, Any]) -> IndexPartition:
    """The manifest entry of a partition work item."""
    return IndexPartition(**{k: p[k] for k in ("key", "file", "part_sha256", "offset", "rows", "gid_start")})


# ---------------------------------------------------------------- the build

def build_index(store_path: str | Path, out_dir: str | Path, cfg: IndexConfig | None = None,
                use_ray: bool = False, resume: bool = True) -> IndexReport:
    """Index the ``cfg.split`` rows of a store (see the module docstring).

    ``use_ray=True`` runs scan / train / add / merge / recall as Ray tasks on the connected
    cluster (the driver holds only per-partition summaries and the recall queries); a rerun
    into the same ``out_dir`` reuses partitions whose done marker matches (``resume``).
    Raises :class:`genoray.index.capacity.CapacityError` before any work when the plan does not fit, and
    :class:`RecallNotReached` when no search setting reaches ``target_recall``.
    """

    if fs.is_remote(out_dir) and not use_ray:  # built in a node-local temp dir, uploaded with manifest.json last
        rep = fs.publish_dir(out_dir, MANIFEST, lambda d: build_index(store_path, d, cfg, use_ray, resume=False))
        return dataclasses.replace(rep, path=str(out_dir))
    cfg = cfg or IndexConfig()
    guard_rerun(out_dir, "index", {"store": store_path}, cfg, cfg.overwrite, write=False)  # other store/settings
    t0 = time.perf_counter()
    # on Ray, every file a task hands on goes through `out` (a URI, or a directory all nodes see)
    out = str(out_dir) if fs.is_remote(out_dir) else str(Path(out_dir))
    if fs.is_file(fs.join(out, MANIFEST)):
        raise FileExistsError(f"{out}: an index already exists here; indexes are never edited in place")
    store = EmbeddingStore(store_path, verify=False)  # verified below, by tasks
    remote_store = fs.is_remote(store.path)
    store_path = str(store.path) if remote_store else str(Path(store_path).resolve())
    d = store.dim
    ex: Any = _Ray(store_path) if use_ray else _Local()
    store.verify(run=lambda fn, calls: ex.map(fn, calls, spread=True, num_cpus=1))  # parts hashed in parallel tasks

    # 0. plan: the split's rows as recorded per part (counted, as tasks, for stores that do not
    # record them), then refuse before any work if it cannot fit the memory of a building node
    recorded = [p.rows_in(cfg.split) for p in store.manifest.parts]
    missing = [i for i, c in enumerate(recorded) if c is None]
    counted = dict(zip(missing, ex.map(count_split, [(store_path, store.manifest.parts[i].file, cfg.split)
                                                     for i in missing], num_cpus=1) if missing else []))
    counts: list[int] = [int(c) if c is not None else int(counted[i]) for i, c in enumerate(recorded)]
    n = sum(counts)
    if n == 0:
        raise ValueError(f"{store_path}: no rows for split {cfg.split!r}")
    factory = choose_factory(n, d, cfg)
    budget_mb = cfg.build_memory_mb or \
        (ex.node_memory_bytes() / 2**20 if use_ray else 0.0)  # 0: this process's machine, which builds
    cluster = ClusterSpec(memory_per_node_mb=budget_mb)
    plan = estimate(n, d, cfg, cluster, partition_rows=min(max(counts), PARTITION_ROWS))
    check_fits(plan)
    ix = plan.stages["index"]
    limit = 0.8 * plan.cluster["memory_per_node_bytes"]
    if not use_ray and ix["peak_single_process_bytes"] > limit:
        raise CapacityError(f"{n} x {d} ({factory}) in one process needs {human(ix['peak_single_process_bytes'])}, "
                            f"over the budget of {human(limit)} (80% of {human(plan.cluster['memory_per_node_bytes'])}); "
                            "build on Ray across nodes (use_ray / --ray) or give more memory")
    ivf = factory.startswith("IVF")
    refine = ivf and ",PQ" in factory
    nlist = int(factory[3:].split(",")[0]) if ivf else 0
    sample_n = cfg.train_sample or train_sample_size(n, nlist, cfg.train_sample_cap)
    n_shards = max(1, min(cfg.shards or math.ceil(n / cfg.shard_size), n))
    sharded = n_shards > 1

    # 1. scan: per-partition sample + query candidates (big arrays stay in the object store on Ray)
    guard_rerun(out_dir, "index", {"store": store_path}, cfg, False)  # records what out_dir is made from
    pdir = fs.join(out, PARTS)
    fs.makedirs(pdir)
    shared = mark_shared(out, pdir) if use_ray else ""
    rate = min(1.0, sample_n / n) if nlist else 0.0
    per_part_q = max(1, math.ceil(2 * cfg.recall_queries / len(counts)))
    scan_calls = [(store_path, p.file, cfg.split, d, rate, per_part_q, cfg.seed * 100_003 + i)
                  for i, p in enumerate(store.manifest.parts)]
    if use_ray:
        scans = ex.refs(scan_part, scan_calls, num_cpus=cfg.add_cpus, num_returns=2)
        metas = ex.ray.get([s[0] for s in scans])
        arrays = [s[1] for s in scans]
    else:
        res = ex.map(scan_part, scan_calls)
        metas, arrays = [r[0] for r in res], [r[1] for r in res]
        del res  # the training samples are then referenced only by `arrays` (freed once trained)
    if [m["rows"] for m in metas] != counts:
        raise ValueError(f"{store_path}: split counts changed during the build")
    queries, from_outside = _pick_queries(ex, arrays, cfg)

    # 2. train once (GPU when the cluster has one and FAISS sees it; checked again in the task)
    template_uri, record_uri = fs.join(out, TRAINED), fs.join(out, TRAINED_RECORD)
    template_key = _template_key(factory, d, sample_n, cfg, store)
    parts = []
    gid = 0
    per_file = max(1, math.ceil(n_shards / len(counts)))
    for i, (sp, c) in enumerate(zip(store.manifest.parts, counts)):
        chunks = max(per_file, math.ceil(c / PARTITION_ROWS))
        for j in range(chunks):
            lo, hi = c * j // chunks, c * (j + 1) // chunks
            parts.append({"key": f"p{i:05d}-{j:03d}", "file": sp.file, "part_sha256": sp.sha256, "offset": lo,
                          "rows": hi - lo, "gid_start": gid + lo})
        gid += c
    opts = {"num_cpus": 1}
    if use_ray and cfg.use_gpu and ex.ray.cluster_resources().get("GPU", 0) > 0:
        opts["num_gpus"] = 1
    record = fs.read_json(record_uri) if resume and fs.is_file(record_uri) and fs.is_file(template_uri) else {}
    if record.get("key") == template_key:
        blob = np.frombuffer(fs.read_bytes(template_uri), dtype=np.uint8)
        gpu_used = bool(record.get("gpu"))
    else:
        samples = arrays if use_ray else [a.pop("sample") for a in arrays]  # emptied by a local train_template
        blob, gpu_used = ex.one(train_template, factory, d, samples, cfg.use_gpu, sharded, **opts)
        del samples
        blob = np.asarray(blob)
        fs.write_bytes(template_uri, blob.tobytes())
        fs.write_json(record_uri, {"key": template_key, "gpu": gpu_used, "sha256": hashlib.sha256(blob.tobytes()).hexdigest()})
        for f in fs.list_files(pdir):  # a new quantizer invalidates every finished partition
            if f.endswith(DONE):
                fs.delete(fs.join(pdir, f))
    del arrays
    template_sha = hashlib.sha256(blob.tobytes()).hexdigest()
    template = ex.put(blob)
    del blob

    # 3. add: skip partitions whose marker matches this template and store part
    todo, done, resumed = [], {}, 0
    present = set(fs.list_files(pdir)) if resume else set()
    for p in parts:
        marker = part_marker(pdir, str(p["key"]))
        if marker.rsplit("/", 1)[-1] in present:
            m = fs.read_json(marker)
            if m.get("part_sha256") == p["part_sha256"] and m.get("gid_start") == p["gid_start"] and \
                    m.get("rows") == p["rows"] and \
                    m.get("template") == template_sha and set(m.get("files", {})) <= present:
                done[p["key"]] = m
                resumed += 1
                continue
        todo.append({**p, "template": template_sha})
    add_calls = [(store_path, p, cfg.split, d, template, pdir, ivf, refine, shared) for p in todo]
    for m in ex.map(add_part, add_calls, num_cpus=cfg.add_cpus, spread=True):
        done[m["key"]] = m
    added = [done[p["key"]] for p in parts]

    # 4. merge: contiguous runs of partitions per shard
    groups: list[list[dict]] = [[] for _ in range(n_shards)]
    for p in added:
        groups[min(n_shards - 1, (2 * p["gid_start"] + p["rows"]) * n_shards // (2 * n))].append(p)
    groups = [g for g in groups if g]
    merge_calls = [(out, s, g, template, factory, sharded, refine, shared) for s, g in enumerate(groups)]
    shards_meta = ex.map(merge_shard, merge_calls, num_cpus=cfg.add_cpus, spread=True)
    peak_worker = max([m.get("peak_rss_mb", 0.0) for m in added] + [s.peak_rss_mb or 0.0 for s in shards_meta])

    # 5. recall: exact truth streamed per partition, then tune
    qref = ex.put(queries)
    sims, truth, _ = exact_topk(ex, store_path, parts, cfg.split, d, qref, 10, num_cpus=cfg.add_cpus)
    queries_from = "outside the indexed split" if from_outside else "indexed rows"  # kept for a night's O(delta) check
    calibration = write_calibration(out, CalibrationSet(queries, sims, truth, n), queries_from)
    manifest = IndexManifest(
        format_version=IndexManifest.FORMAT_VERSION, type=factory.split(",")[0].rstrip("0123456789") or factory,
        factory=factory, metric="cosine", dim=d, ntotal=n, encoder=store.encoder_spec, fingerprint=store.fingerprint,
        split=cfg.split, source_store=store_path, gpu_trained=gpu_used, shards=tuple(shards_meta),
        shared_quantizer=ivf, clean=store.clean_policy,
        trained=TrainedIndex(file=TRAINED, sha256=template_sha, train_sample=sample_n),
        partitions=tuple(partition(p) for p in parts))
    params, recall, _tried = ex.one(tune_index, out, manifest, qref, truth, cfg.target_recall,
                                   cfg.refine_k_factor_max, num_cpus=1)
    if recall < cfg.target_recall:
        raise RecallNotReached(
            f"{out}: recall@10 {recall:.3f} < target {cfg.target_recall} for {factory} with every nprobe up to nlist"
            + (f" and re-ranking up to k x {cfg.refine_k_factor_max}" if refine else "")
            + "; give more memory (--memory-budget-mb), a larger re-rank depth, or a lower --target-recall")
    add_nodes = tuple(sorted({m["node_id"] for m in added}))
    manifest = dataclasses.replace(
        manifest, search_params=params,
        recall_at_10=RecallReport(value=recall, queries=len(queries), target=cfg.target_recall,
                                  queries_from=queries_from, oracle="exact cosine over all indexed rows"),
        calibration=calibration,
        build=BuildInfo(partitions=len(parts), resumed=resumed, add_nodes=add_nodes, peak_worker_rss_mb=peak_worker))
    write_manifest(out, manifest)
    fs.delete_dir(pdir)
    clear_shared(out)
    seconds = round(time.perf_counter() - t0, 3)
    log.info("build_index %s: %s, %d shards, %d x %d, %s, recall@10 %.3f; %d partitions (%d resumed); %.1f s",
             out_dir, factory, len(shards_meta), n, d, params or "exact", recall, len(parts), resumed, seconds)
    return IndexReport(str(out_dir), factory, len(shards_meta), n, d, recall, params, gpu_used,
                       seconds, sample_n, len(parts), resumed,
                       list(add_nodes), peak_worker,
                       {"peak_single_process_mb": ix["peak_single_process_bytes"] / 2**20,
                        "peak_worker_mb": ix["peak_worker_bytes"] / 2**20,
                        "peak_add_worker_mb": ix["peak_add_worker_bytes"] / 2**20,
                        "single_process_s": ix["single_process_s"], "build_s": ix["build_hours"] * 3600})
