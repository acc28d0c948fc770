"""``build_index``: one FAISS index over a store's rows, built per store partition (on Ray or in
one process; both run the same stage functions and give identical files).

The index type follows the corpus (in the spirit of autofaiss):

* fewer than ``flat_threshold`` vectors: exact ``Flat``;
* otherwise ``IVF<nlist>,SQ8`` (one byte per dimension) when the codes fit
  ``memory_budget_mb``, else ``IVF<nlist>,PQ<m>`` with ``m`` bytes per vector chosen to fit,
  re-ranked from stored float16 vectors (memory-mapped, not resident) so the recall target is
  reached; ``IVF<nlist>,Flat`` or ``HNSW32`` on request.

Stages:

0. **plan**: :func:`genoray.plan.estimate` predicts peak memory per worker (and of one process);
   the build refuses before any work when it does not fit ``build_memory_mb``.
1. **scan** (one task per store partition): row count of the split, a Bernoulli training
   sample sized from nlist (:func:`genoray.plan.train_sample_size`: at least 39 points per
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
5. **recall**: exact top-10 of held-out queries per partition (streamed), then ``nprobe`` (and
   for PQ the re-rank depth ``k_factor``) tuned to the smallest values reaching
   ``target_recall``. When no setting reaches it the build fails and says so.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genoray.artifacts import read_json, sha256_file, write_json
from genoray.config import IndexConfig
from genoray.index.core import (
    FORMAT_VERSION,
    MANIFEST,
    VectorIndex,
    _faiss,
    choose_factory,
    gpu_count,
    l2_normalize,
    merge_topk,
    recall_at_k,
    write_without_quantizer,
)

PARTITION_ROWS = 250_000  # rows per add task at most (bounds a worker's memory)


class RecallNotReached(RuntimeError):
    """No search setting within the budget reaches the recall target."""


@dataclass
class IndexReport:
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


# ---------------------------------------------------------------- stage functions (run as tasks)

def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    return 0.0


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except (ImportError, RuntimeError):  # pragma: no cover - outside Ray
        return "local"
    return "local"


def _read_part(store_path: str, part: dict[str, Any], split: str | None, columns: list[str]) -> pa.Table:
    """Rows ``offset .. offset + rows`` of the split in one store file."""
    t = pq.read_table(Path(store_path) / part["file"], columns=columns + (["split"] if split is not None else []))
    if split is not None:
        t = t.filter(pc.fill_null(pc.equal(t["split"], split), False))
    return t.slice(part.get("offset", 0), part["rows"])


def _vectors(t: pa.Table, d: int) -> np.ndarray:
    from genoray.store import vectors_of

    return l2_normalize(vectors_of(t, d))


def scan_part(store_path: str, part_file: str, split: str | None, d: int, rate: float, n_queries: int,
              seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Count, training sample (Bernoulli ``rate``) and candidate queries of one partition."""
    rng = np.random.default_rng(seed)
    t = pq.read_table(Path(store_path) / part_file, columns=["split", "embedding"])
    inside = np.ones(t.num_rows, bool) if split is None else \
        np.asarray(pc.fill_null(pc.equal(t["split"], split), False).to_numpy(zero_copy_only=False), bool)
    from genoray.store import vectors_of

    vec = vectors_of(t, d)
    vin, vout = vec[inside], vec[~inside]
    sample = l2_normalize(vin[rng.random(len(vin)) < rate])
    q_in = vin[rng.choice(len(vin), size=min(len(vin), n_queries), replace=False)]
    q_out = vout[rng.choice(len(vout), size=min(len(vout), n_queries), replace=False)]
    return {"rows": int(inside.sum()), "sample": len(sample)}, {"sample": sample, "q_in": q_in, "q_out": q_out}


def train_template(factory: str, d: int, samples: list, use_gpu: bool, sharded: bool) -> tuple[np.ndarray, bool]:
    """Train the empty index once on the concatenated samples; serialised bytes and GPU used."""
    faiss = _faiss()
    samples = [_resolve(s)["sample"] if not isinstance(s, np.ndarray) else s for s in samples]
    x = np.concatenate(samples) if samples else np.zeros((0, d), np.float32)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if sharded and not factory.startswith("IVF"):
        index = faiss.IndexIDMap(index)
    gpu_used = False
    if not index.is_trained:
        if len(x) == 0:
            raise ValueError(f"{factory}: no training vectors")
        if use_gpu and gpu_count() > 0:
            try:
                gpu = faiss.index_cpu_to_all_gpus(index)
                gpu.train(x)
                index, gpu_used = faiss.index_gpu_to_cpu(gpu), True
            except RuntimeError:  # e.g. a PQ code size the GPU refuses: train on CPU instead
                index.train(x)
        else:
            index.train(x)
    return faiss.serialize_index(index), gpu_used


def add_part(store_path: str, part: dict[str, Any], split: str | None, d: int, template, parts_dir: str,
             ivf: bool, refine: bool) -> dict[str, Any]:
    """Add one partition's rows (gids ``gid_start..``) to a copy of the trained index; write its
    files and, last, its done marker."""
    faiss = _faiss()
    out = Path(parts_dir)
    key = part["key"]
    (out / f"{key}.started").write_text(str(os.getpid()))
    t = _read_part(store_path, part, split, ["seq_id", "label", "embedding"])
    if t.num_rows != part["rows"]:
        raise ValueError(f"{part['file']}: {t.num_rows} rows of the split, counted {part['rows']} (store changed?)")
    vec = _vectors(t, d)
    gids = np.arange(part["gid_start"], part["gid_start"] + t.num_rows, dtype=np.int64)
    files = {}
    tmp = f".tmp{os.getpid()}"  # a retried or duplicate task never leaves a half-written file
    if ivf:
        index = faiss.deserialize_index(np.asarray(_resolve(template)))
        if len(vec):
            index.add_with_ids(vec, gids)
        faiss.write_index(index, str(out / f"{key}.faiss{tmp}"))
        os.replace(out / f"{key}.faiss{tmp}", out / f"{key}.faiss")
        files[f"{key}.faiss"] = sha256_file(out / f"{key}.faiss")
        del index
    if refine or not ivf:
        with open(out / f"{key}.vec.npy{tmp}", "wb") as fh:
            np.save(fh, vec.astype(np.float16 if refine else np.float32))
        os.replace(out / f"{key}.vec.npy{tmp}", out / f"{key}.vec.npy")
        files[f"{key}.vec.npy"] = sha256_file(out / f"{key}.vec.npy")
    pq.write_table(pa.table({"gid": pa.array(gids), "seq_id": t["seq_id"], "label": t["label"]}),
                   out / f"{key}.ids.parquet{tmp}")
    os.replace(out / f"{key}.ids.parquet{tmp}", out / f"{key}.ids.parquet")
    files[f"{key}.ids.parquet"] = sha256_file(out / f"{key}.ids.parquet")
    done = {**part, "files": files, "node_id": _node_id(), "pid": os.getpid(), "peak_rss_mb": _peak_rss_mb()}
    write_json(out / f"{key}.done.json", done)
    return done


def merge_shard(out_dir: str, shard: int, parts: list[dict[str, Any]], template, factory: str,
                sharded: bool, refine: bool) -> dict[str, Any]:
    """One shard from its partitions (contiguous gids), sharing the trained quantizer."""
    faiss = _faiss()
    out, pdir = Path(out_dir), Path(out_dir) / "parts"
    index = faiss.deserialize_index(np.asarray(_resolve(template)))
    ivf = factory.startswith("IVF")
    for p in parts:
        if ivf:
            part_index = faiss.read_index(str(pdir / f"{p['key']}.faiss"))
            index.merge_from(part_index, 0)
            del part_index
        else:
            vec = np.load(pdir / f"{p['key']}.vec.npy")
            if sharded:
                index.add_with_ids(vec, np.arange(p["gid_start"], p["gid_start"] + len(vec), dtype=np.int64))
            else:
                index.add(vec)
    fi, fids = f"shard-{shard:02d}.faiss", f"ids-{shard:02d}.parquet"
    if ivf:
        write_without_quantizer(index, out / fi)
    else:
        faiss.write_index(index, str(out / fi))
    ntotal = int(index.ntotal)
    del index
    tables = [pq.read_table(pdir / f"{p['key']}.ids.parquet") for p in parts]
    pq.write_table(pa.concat_tables(tables) if tables else pa.table({"gid": pa.array([], pa.int64()),
                   "seq_id": pa.array([], pa.string()), "label": pa.array([], pa.string())}), out / fids)
    meta = {"index": fi, "ids": fids, "ntotal": ntotal, "gid_start": parts[0]["gid_start"] if parts else 0,
            "sha256": {fi: sha256_file(out / fi), fids: sha256_file(out / fids)}, "peak_rss_mb": _peak_rss_mb()}
    if refine:
        fr = f"refine-{shard:02d}.npy"
        vecs = [np.load(pdir / f"{p['key']}.vec.npy", mmap_mode="r") for p in parts]
        total = sum(len(v) for v in vecs)
        mm = np.lib.format.open_memmap(out / fr, mode="w+", dtype=np.float16, shape=(total, vecs[0].shape[1] if vecs else 0))
        pos = 0
        for v in vecs:
            mm[pos:pos + len(v)] = v
            pos += len(v)
        mm.flush()
        del mm
        meta["refine"] = fr
        meta["sha256"][fr] = sha256_file(out / fr)
    return meta


def exact_part(store_path: str, part: dict[str, Any], split: str | None, d: int, queries: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (cosine) of ``queries`` among one partition's rows, as global ids."""
    faiss = _faiss()
    t = _read_part(store_path, part, split, ["embedding"])
    q = l2_normalize(np.asarray(_resolve(queries)))
    if t.num_rows == 0:
        return np.full((len(q), 0), -np.inf, np.float32), np.zeros((len(q), 0), np.int64)
    sims, top = faiss.knn(q, _vectors(t, d), min(k, t.num_rows), metric=faiss.METRIC_INNER_PRODUCT)
    return sims, top + part["gid_start"]


def tune_index(out_dir: str, manifest: dict[str, Any], queries, truth, target: float,
               k_factor_max: int) -> tuple[dict[str, int], float, list]:
    """Smallest nprobe / efSearch (and PQ re-rank depth) reaching ``target`` recall@10 (else the
    best setting tried, with its recall)."""
    vindex = VectorIndex.open(out_dir, manifest, mmap=True)
    q, truth = np.asarray(_resolve(queries)), np.asarray(_resolve(truth))
    factory = manifest["factory"]
    if factory.startswith("IVF"):
        nlist = int(factory[3:].split(",")[0])
        steps = sorted({2**i for i in range(17)} | {3 * 2**i for i in range(16)})  # 1 2 3 4 6 8 12 16 24 ...
        grid = [{"nprobe": p} for p in steps if p <= nlist]
    elif factory.startswith("HNSW"):
        grid = [{"efSearch": e} for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)]
    else:
        grid = [{}]
    factors = [1] + [f for f in (2, 4, 8, 16, 32, 64) if f <= k_factor_max] if vindex.refine else [1]
    tried = []
    for kf in factors:
        for params in grid:
            p = {**params, "k_factor": kf} if kf > 1 else dict(params)
            vindex.set_search_params(p)
            recall = recall_at_k(vindex.search(q, 10)[1], truth)
            tried.append((p, recall))
            if recall >= target:
                return p, recall, tried
    best = max(tried, key=lambda t: t[1])
    return best[0], best[1], tried


def _resolve(x):
    try:
        import ray

        if isinstance(x, ray.ObjectRef):
            return ray.get(x)
    except ImportError:  # pragma: no cover
        pass
    return x


# ---------------------------------------------------------------- executors

class _Local:
    """Runs stage functions in this process."""

    def put(self, x):
        return x

    def map(self, fn, calls: list[tuple], **opts) -> list:
        return [fn(*c) for c in calls]

    def one(self, fn, *args, **opts):
        return fn(*args)


class _Ray:
    """Runs stage functions as Ray tasks (retried when their worker dies)."""

    def __init__(self):
        import ray

        self.ray = ray

    def put(self, x):
        return self.ray.put(x)

    def _remote(self, fn, **opts):
        return self.ray.remote(fn).options(max_retries=3, retry_exceptions=False, **opts)

    def map(self, fn, calls: list[tuple], **opts) -> list:
        f = self._remote(fn, **opts)
        return self.ray.get([f.remote(*c) for c in calls])

    def refs(self, fn, calls: list[tuple], **opts) -> list:
        f = self._remote(fn, **opts)
        return [f.remote(*c) for c in calls]

    def one(self, fn, *args, **opts):
        return self.ray.get(self._remote(fn, **opts).remote(*args))


def _queries_of(arrays) -> tuple[np.ndarray, np.ndarray]:
    return arrays["q_in"], arrays["q_out"]


def _pick_queries(ex, arrays: list, cfg: IndexConfig) -> tuple[np.ndarray, bool]:
    """``recall_queries`` held-out queries: from outside the indexed split when there are any."""
    got = ex.map(_queries_of, [(a,) for a in arrays], num_cpus=0.01)
    q_out = [g[1] for g in got if len(g[1])]
    pool = np.concatenate(q_out) if q_out else np.concatenate([g[0] for g in got])
    rng = np.random.default_rng(cfg.seed)
    return pool[rng.choice(len(pool), size=min(len(pool), cfg.recall_queries), replace=False)], bool(q_out)


def _template_key(factory: str, d: int, sample_n: int, cfg: IndexConfig, store) -> str:
    """What the trained index depends on: a matching key lets a rerun reuse it."""
    return f"{factory}|{d}|{sample_n}|{cfg.seed}|{cfg.split}|{store.fingerprint}|" + \
        ",".join(p["sha256"] for p in store.manifest["parts"])


def _files_ok(root: Path, files: dict[str, str]) -> bool:
    return all((root / f).is_file() for f in files)


# ---------------------------------------------------------------- the build

def build_index(store_path: str | Path, out_dir: str | Path, cfg: IndexConfig | None = None,
                use_ray: bool = False, resume: bool = True) -> IndexReport:
    """Index the ``cfg.split`` rows of a store (see the module docstring).

    ``use_ray=True`` runs scan / train / add / merge / recall as Ray tasks on the connected
    cluster (the driver holds only per-partition summaries and the recall queries); a rerun
    into the same ``out_dir`` reuses partitions whose done marker matches (``resume``).
    Raises :class:`genoray.plan.CapacityError` before any work when the plan does not fit, and
    :class:`RecallNotReached` when no search setting reaches ``target_recall``.
    """
    from genoray.plan import (
        CapacityError,
        ClusterSpec,
        check_fits,
        estimate,
        human,
        train_sample_size,
    )
    from genoray.store import EmbeddingStore

    cfg = cfg or IndexConfig()
    t0 = time.perf_counter()
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out}: an index already exists here; indexes are never edited in place")
    store = EmbeddingStore(store_path)
    store_path = str(Path(store_path).resolve())
    d = store.dim
    ex = _Ray() if use_ray else _Local()

    # 0. plan: count the split (split column only), then refuse before any work if it cannot fit
    counts = []
    for p in store.manifest["parts"]:
        if cfg.split is None:
            counts.append(int(p["rows"]))
        else:
            col = pq.read_table(store.path / p["file"], columns=["split"])["split"]
            counts.append(int(pc.sum(pc.equal(col, cfg.split)).as_py() or 0))
    n = sum(counts)
    if n == 0:
        raise ValueError(f"{store_path}: no rows for split {cfg.split!r}")
    factory = choose_factory(n, d, cfg)
    budget_gb = cfg.build_memory_mb / 1024 if cfg.build_memory_mb else 0.0
    cluster = ClusterSpec(memory_per_node_gb=budget_gb)
    plan = estimate(n, d, cfg, cluster, partition_rows=min(max(counts), PARTITION_ROWS), queries=cfg.recall_queries)
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
    out.mkdir(parents=True, exist_ok=True)
    pdir = out / "parts"
    pdir.mkdir(exist_ok=True)
    rate = min(1.0, sample_n / n) if nlist else 0.0
    per_part_q = max(1, math.ceil(2 * cfg.recall_queries / len(counts)))
    scan_calls = [(store_path, p["file"], cfg.split, d, rate, per_part_q, cfg.seed * 100_003 + i)
                  for i, p in enumerate(store.manifest["parts"])]
    if use_ray:
        scans = ex.refs(scan_part, scan_calls, num_cpus=cfg.add_cpus, num_returns=2)
        metas = ex.ray.get([s[0] for s in scans])
        arrays = [s[1] for s in scans]
    else:
        res = ex.map(scan_part, scan_calls)
        metas, arrays = [r[0] for r in res], [r[1] for r in res]
    if [m["rows"] for m in metas] != counts:
        raise ValueError(f"{store_path}: split counts changed during the build")
    queries, from_outside = _pick_queries(ex, arrays, cfg)

    # 2. train once (GPU when the cluster has one and FAISS sees it; checked again in the task)
    template_file = out / "trained.faiss"
    parts = []
    gid = 0
    per_file = max(1, math.ceil(n_shards / len(counts)))
    for i, (p, c) in enumerate(zip(store.manifest["parts"], counts)):
        chunks = max(per_file, math.ceil(c / PARTITION_ROWS))
        for j in range(chunks):
            lo, hi = c * j // chunks, c * (j + 1) // chunks
            parts.append({"key": f"p{i:05d}-{j:03d}", "file": p["file"], "part_sha256": p["sha256"], "offset": lo,
                          "rows": hi - lo, "gid_start": gid + lo})
        gid += c
    opts = {"num_cpus": 1}
    if use_ray and cfg.use_gpu and ex.ray.cluster_resources().get("GPU", 0) > 0:
        opts["num_gpus"] = 1
    if resume and template_file.exists() and (out / "trained.json").exists() and \
            read_json(out / "trained.json").get("key") == _template_key(factory, d, sample_n, cfg, store):
        blob = np.fromfile(template_file, dtype=np.uint8)
        gpu_used = bool(read_json(out / "trained.json").get("gpu"))
    else:
        samples = arrays if use_ray else [a["sample"] for a in arrays]
        blob, gpu_used = ex.one(train_template, factory, d, samples, cfg.use_gpu, sharded, **opts)
        np.asarray(blob).tofile(template_file)
        write_json(out / "trained.json", {"key": _template_key(factory, d, sample_n, cfg, store), "gpu": gpu_used,
                                          "sha256": sha256_file(template_file)})
        # a new quantizer invalidates every finished partition
        for f in pdir.glob("*.done.json"):
            f.unlink()
    del arrays
    template_sha = sha256_file(template_file)
    template = ex.put(blob)
    del blob

    # 3. add: skip partitions whose marker matches this template and store part
    todo, done, resumed = [], {}, 0
    for p in parts:
        marker = pdir / f"{p['key']}.done.json"
        if resume and marker.exists():
            m = read_json(marker)
            if m.get("part_sha256") == p["part_sha256"] and m.get("gid_start") == p["gid_start"] and \
                    m.get("rows") == p["rows"] and \
                    m.get("template") == template_sha and _files_ok(pdir, m.get("files", {})):
                done[p["key"]] = m
                resumed += 1
                continue
        todo.append({**p, "template": template_sha})
    add_calls = [(store_path, p, cfg.split, d, template, str(pdir), ivf, refine) for p in todo]
    for m in ex.map(add_part, add_calls, num_cpus=cfg.add_cpus):
        done[m["key"]] = m
    added = [done[p["key"]] for p in parts]

    # 4. merge: contiguous runs of partitions per shard
    groups: list[list[dict]] = [[] for _ in range(n_shards)]
    for p in added:
        groups[min(n_shards - 1, (2 * p["gid_start"] + p["rows"]) * n_shards // (2 * n))].append(p)
    groups = [g for g in groups if g]
    merge_calls = [(str(out), s, g, template, factory, sharded, refine) for s, g in enumerate(groups)]
    shards_meta = ex.map(merge_shard, merge_calls, num_cpus=cfg.add_cpus)
    peak_worker = max([m.get("peak_rss_mb", 0.0) for m in added + shards_meta] or [0.0])

    # 5. recall: exact truth streamed per partition, then tune
    qref = ex.put(queries)
    exact = ex.map(exact_part, [(store_path, p, cfg.split, d, qref, 10) for p in parts], num_cpus=cfg.add_cpus)
    truth = merge_topk([e[0] for e in exact], [e[1] for e in exact], 10)[1]
    manifest = {"format_version": FORMAT_VERSION, "type": factory.split(",")[0].rstrip("0123456789") or factory,
                "factory": factory, "metric": "cosine", "dim": d, "ntotal": n, "encoder": store.encoder_spec,
                "fingerprint": store.fingerprint, "split": cfg.split, "source_store": store_path,
                "gpu_trained": gpu_used, "shards": shards_meta, "shared_quantizer": ivf,
                "trained": {"file": "trained.faiss", "sha256": template_sha, "train_sample": sample_n},
                "partitions": [{k: p[k] for k in ("key", "file", "part_sha256", "offset", "rows", "gid_start")} for p in parts]}
    params, recall, _tried = ex.one(tune_index, str(out), manifest, qref, truth, cfg.target_recall,
                                   cfg.refine_k_factor_max, num_cpus=1)
    if recall < cfg.target_recall:
        raise RecallNotReached(
            f"{out}: recall@10 {recall:.3f} < target {cfg.target_recall} for {factory} with every nprobe up to nlist"
            + (f" and re-ranking up to k x {cfg.refine_k_factor_max}" if refine else "")
            + "; give more memory (--memory-budget-mb), a larger re-rank depth, or a lower --target-recall")
    manifest["search_params"] = params
    manifest["recall_at_10"] = {"value": recall, "queries": len(queries), "target": cfg.target_recall,
                                "queries_from": "outside the indexed split" if from_outside else "indexed rows",
                                "oracle": "exact cosine over all indexed rows"}
    manifest["build"] = {"partitions": len(parts), "resumed": resumed,
                         "add_nodes": sorted({m["node_id"] for m in added}), "peak_worker_rss_mb": peak_worker}
    write_json(out / MANIFEST, manifest)
    shutil.rmtree(pdir, ignore_errors=True)
    return IndexReport(str(out_dir), factory, len(shards_meta), n, d, recall, params, gpu_used,
                       round(time.perf_counter() - t0, 3), sample_n, len(parts), resumed,
                       sorted({m["node_id"] for m in added}), peak_worker,
                       {"peak_single_process_mb": ix["peak_single_process_bytes"] / 2**20,
                        "peak_worker_mb": ix["peak_worker_bytes"] / 2**20,
                        "peak_add_worker_mb": ix["peak_add_worker_bytes"] / 2**20,
                        "single_process_s": ix["single_process_s"], "build_s": ix["build_hours"] * 3600})
