"""The stages of :func:`genoray.index.build_index` as plain functions (run in this process or as
Ray tasks; see :mod:`genoray.index.build`), and the two executors that run them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genoray.config import IndexConfig
from genoray.embedding.store import EMBEDDING, LABEL, SEQ_ID, SPLIT, vectors_of
from genoray.index.core import VectorIndex, _faiss, gpu_count, write_without_quantizer
from genoray.index.ivf_merge import write_merged_ivf, write_shard_ids
from genoray.index.knn import l2_normalize, recall_at_k
from genoray.index.manifest import PARTS, IndexManifest, IndexShard, ids_file, refine_file, shard_file
from genoray.infra import fs
from genoray.infra.artifacts import sha256_file, verify_files
from genoray.infra.staging import check_shared, local_view, push

PARTITION_ROWS = 250_000  # rows per add task at most (bounds its output files and its retry cost)
DONE = ".done.json"  # a partition's marker in parts/, written last by its add task


def part_marker(parts_dir: str | Path, key: str) -> str:
    """The done marker of partition ``key`` (its files are whole once it exists), a path or URI."""
    return fs.join(parts_dir, f"{key}{DONE}")


BATCH_ROWS = 32_768  # rows a stage decodes at once: its working memory is O(BATCH_ROWS x dim), not O(partition)


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


def _in_split(t, split: str):
    """Boolean mask of the rows of a table or batch whose ``split`` is ``split`` (null: not in it)."""
    return pc.fill_null(pc.equal(t[SPLIT], split), False)


def _split_batches(store_path: str, file: str, split: str | None, columns: list[str], offset: int = 0,
                   rows: int | None = None):
    """The split's rows ``offset .. offset + rows`` of one store file, streamed as tables of at
    most :data:`BATCH_ROWS` rows (the file is never decoded whole)."""

    cols = columns + ([SPLIT] if split is not None and SPLIT not in columns else [])
    pos, end = 0, offset + rows if rows is not None else None
    for b in fs.iter_batches(fs.join(store_path, file), cols, BATCH_ROWS):
        if end is not None and pos >= end:
            break
        t = pa.Table.from_batches([b])
        if split is not None:
            t = t.filter(_in_split(t, split))
        lo, hi = max(offset - pos, 0), t.num_rows if end is None else min(end - pos, t.num_rows)
        pos += t.num_rows
        if hi > lo:
            yield t.slice(lo, hi - lo)


def count_split(store_path: str, file: str, split: str | None) -> int:
    """Rows of ``split`` (all rows when None) in one store file, reading only its split column,
    streamed (the driver of a build over many files keeps no column in memory)."""

    n = 0
    for b in fs.iter_batches(fs.join(store_path, file), [SPLIT], 8 * BATCH_ROWS):
        n += b.num_rows if split is None else int(pc.sum(_in_split(b, split)).as_py() or 0)
    return n


def _vectors(t: pa.Table, d: int) -> np.ndarray:
    return l2_normalize(vectors_of(t, d))


class _Reservoir:
    """A uniform sample without replacement of at most ``size`` rows of a stream (each row gets a
    random key; the smallest keys are kept), so a partition need not be held to draw from it."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.keys = np.zeros(0)
        self.rows: np.ndarray | None = None

    def offer(self, x: np.ndarray) -> None:
        keys = np.concatenate([self.keys, self.rng.random(len(x))])
        rows = x if self.rows is None else np.concatenate([self.rows, x])
        keep = np.argsort(keys, kind="stable")[:self.size]
        self.keys, self.rows = keys[keep], rows[keep]

    def result(self, d: int) -> np.ndarray:
        return np.zeros((0, d), np.float32) if self.rows is None else self.rows


def scan_part(store_path: str, part_file: str, split: str | None, d: int, rate: float, n_queries: int,
              seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Count, training sample (Bernoulli ``rate``) and candidate queries of one partition,
    streamed :data:`BATCH_ROWS` rows at a time."""

    rng = np.random.default_rng(seed)
    rows, samples = 0, []
    q_in, q_out = _Reservoir(n_queries, rng), _Reservoir(n_queries, rng)
    for b in fs.iter_batches(fs.join(store_path, part_file), [SPLIT, EMBEDDING], BATCH_ROWS):
        t = pa.Table.from_batches([b])
        inside = np.ones(t.num_rows, bool) if split is None else \
            np.asarray(_in_split(t, split).to_numpy(zero_copy_only=False), bool)
        vec = vectors_of(t, d)
        vin = vec[inside]
        rows += len(vin)
        samples.append(l2_normalize(vin[rng.random(len(vin)) < rate]))
        q_in.offer(vin)
        q_out.offer(vec[~inside])
    sample = np.concatenate(samples) if samples else np.zeros((0, d), np.float32)
    return {"rows": rows, "sample": len(sample)}, {"sample": sample, "q_in": q_in.result(d), "q_out": q_out.result(d)}


def train_template(factory: str, d: int, samples: list, use_gpu: bool, sharded: bool) -> tuple[np.ndarray, bool]:
    """Train the empty index once on the concatenated samples (the list is emptied as they are
    copied, each freed once copied); serialised bytes and GPU used."""
    faiss = _faiss()
    if any(not isinstance(s, np.ndarray) for s in samples):  # object refs (on Ray)
        samples[:] = [_resolve(s)["sample"] if not isinstance(s, np.ndarray) else s for s in samples]
    x, pos = np.empty((sum(len(s) for s in samples), d), np.float32), 0
    while samples:
        s = samples.pop(0)
        x[pos:pos + len(s)], pos = s, pos + len(s)
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


def task_threads() -> int:
    """Give FAISS the CPUs Ray granted this task (Ray sets ``OMP_NUM_THREADS=1`` in its workers,
    so a task granted 4 CPUs would otherwise train and add on one thread); returns the count.
    Outside Ray FAISS keeps its own setting."""
    try:
        import ray

        if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
            return 0
        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1) or 1)
    except (ImportError, RuntimeError, AttributeError):  # pragma: no cover - outside Ray
        return 0
    _faiss().omp_set_num_threads(max(1, cpus))
    return max(1, cpus)


def add_part(store_path: str, part: dict[str, Any], split: str | None, d: int, template, parts_dir: str,
             ivf: bool, refine: bool, shared: str = "") -> dict[str, Any]:
    """Add one partition's rows (gids ``gid_start..``) to a copy of the trained index; write its
    files under ``parts_dir`` (a local directory, or a URI: then written in a node-local scratch
    dir and uploaded) and, last, its done marker. ``shared``: the driver's
    :func:`~genoray.infra.staging.mark_shared` token of a local ``parts_dir``."""
    check_shared(parts_dir, shared, _node_id())
    task_threads()
    faiss = _faiss()
    key = part["key"]
    with local_view(parts_dir) as out:
        (out / f"{key}.started").write_text(str(os.getpid()))
        files = _add_files(out, store_path, part, split, d, template, ivf, refine, faiss)
        push(out, parts_dir, files)
    done = {**part, "files": files, "node_id": _node_id(), "pid": os.getpid(), "peak_rss_mb": _peak_rss_mb()}
    fs.write_json(part_marker(parts_dir, key), done)
    return done


def _add_files(out: Path, store_path: str, part: dict[str, Any], split: str | None, d: int, template,
               ivf: bool, refine: bool, faiss) -> dict[str, str]:
    """:func:`add_part`'s files in the local directory ``out``: name -> sha256."""
    key = part["key"]
    tmp = f".tmp{os.getpid()}"  # a retried or duplicate task never leaves a half-written file
    index = faiss.deserialize_index(np.asarray(_resolve(template))) if ivf else None
    kept = None
    if refine or not ivf:  # the vectors beside the codes (re-ranking) or instead of them (Flat)
        kept = np.lib.format.open_memmap(out / f"{key}.vec.npy{tmp}", mode="w+", shape=(part["rows"], d),
                                         dtype=np.float16 if refine else np.float32)
    meta, pos = [], 0
    for t in _split_batches(store_path, part["file"], split, [SEQ_ID, LABEL, EMBEDDING],
                            part.get("offset", 0), part["rows"]):
        vec = _vectors(t, d)
        if index is not None:
            index.add_with_ids(vec, np.arange(part["gid_start"] + pos, part["gid_start"] + pos + len(vec), dtype=np.int64))
        if kept is not None:
            kept[pos:pos + len(vec)] = vec
        meta.append(t.select([SEQ_ID, LABEL]))
        pos += len(vec)
    if pos != part["rows"]:
        raise ValueError(f"{part['file']}: {pos} rows of the split, counted {part['rows']} (store changed?)")
    files = {}
    if index is not None:
        faiss.write_index(index, str(out / f"{key}.faiss{tmp}"))
        os.replace(out / f"{key}.faiss{tmp}", out / f"{key}.faiss")
        files[f"{key}.faiss"] = sha256_file(out / f"{key}.faiss")
        del index
    if kept is not None:
        kept.flush()
        del kept
        os.replace(out / f"{key}.vec.npy{tmp}", out / f"{key}.vec.npy")
        files[f"{key}.vec.npy"] = sha256_file(out / f"{key}.vec.npy")
    ids = pa.concat_tables(meta) if meta else pa.table({SEQ_ID: pa.array([], pa.string()),
                                                        LABEL: pa.array([], pa.string())})
    gids = pa.array(np.arange(part["gid_start"], part["gid_start"] + pos, dtype=np.int64))
    pq.write_table(pa.table({"gid": gids, SEQ_ID: ids[SEQ_ID], LABEL: ids[LABEL]}),
                   out / f"{key}.ids.parquet{tmp}")
    os.replace(out / f"{key}.ids.parquet{tmp}", out / f"{key}.ids.parquet")
    files[f"{key}.ids.parquet"] = sha256_file(out / f"{key}.ids.parquet")
    return files


def merge_shard(out_dir: str, shard: int, parts: list[dict[str, Any]], template, factory: str,
                sharded: bool, refine: bool, shared: str = "", parts_dir: str | None = None) -> IndexShard:
    """One shard from its partitions (contiguous gids), sharing the trained quantizer. The
    partitions' files are read from ``parts_dir`` (default ``out_dir/parts``; downloaded in
    parallel, and checked against their done markers' sha256, when it is a URI); the shard's
    files are written to ``out_dir`` (uploaded from a node-local scratch dir when it is a URI)."""
    parts_dir = parts_dir or fs.join(out_dir, PARTS)
    for d in (out_dir, parts_dir):
        check_shared(d, shared, _node_id())
    task_threads()
    part_files = {f: sha for p in parts for f, sha in p.get("files", {}).items()}
    with local_view(parts_dir, part_files) as pdir, local_view(out_dir) as out:
        if fs.is_remote(parts_dir):
            verify_files(pdir, part_files)
        meta = _merge_files(out, pdir, shard, parts, template, factory, sharded, refine)
        push(out, out_dir, meta.sha256)
    return meta


def _merge_files(out: Path, pdir: Path, shard: int, parts: list[dict[str, Any]], template, factory: str,
                 sharded: bool, refine: bool) -> IndexShard:
    """:func:`merge_shard` between local directories."""
    faiss = _faiss()
    blob = np.asarray(_resolve(template))
    ivf = factory.startswith("IVF")
    fi, fids = shard_file(shard), ids_file(shard)
    # IVF: written list by list from the partitions' files (O(one list) memory, same bytes)
    merged = write_merged_ivf(blob, [pdir / f"{p['key']}.faiss" for p in parts], out / fi) if ivf else None
    ntotal = merged
    if ntotal is None:  # Flat (small by construction), or an IVF layout write_merged_ivf does not read
        index = faiss.deserialize_index(blob)
        for p in parts:
            if ivf:
                index.merge_from(faiss.read_index(str(pdir / f"{p['key']}.faiss")), 0)
            else:
                vec = np.load(pdir / f"{p['key']}.vec.npy", allow_pickle=False)
                if sharded:
                    index.add_with_ids(vec, np.arange(p["gid_start"], p["gid_start"] + len(vec), dtype=np.int64))
                else:
                    index.add(vec)
        if ivf:
            write_without_quantizer(index, out / fi)
        else:
            faiss.write_index(index, str(out / fi))
        ntotal = int(index.ntotal)
        del index
    write_shard_ids([pdir / f"{p['key']}.ids.parquet" for p in parts], out / fids)
    sha = {fi: sha256_file(out / fi), fids: sha256_file(out / fids)}
    fr = None
    if refine:
        fr = refine_file(shard)
        vecs = [np.load(pdir / f"{p['key']}.vec.npy", mmap_mode="r", allow_pickle=False) for p in parts]
        total = sum(len(v) for v in vecs)
        mm = np.lib.format.open_memmap(out / fr, mode="w+", dtype=np.float16, shape=(total, vecs[0].shape[1] if vecs else 0))
        pos = 0
        for v in vecs:
            mm[pos:pos + len(v)] = v
            pos += len(v)
        mm.flush()
        del mm
        sha[fr] = sha256_file(out / fr)
    return IndexShard(index=fi, ids=fids, ntotal=ntotal, sha256=sha, gid_start=parts[0]["gid_start"] if parts else 0,
                      refine=fr, peak_rss_mb=_peak_rss_mb())


NPROBE_STEPS = tuple(sorted({2**i for i in range(17)} | {3 * 2**i for i in range(16)}))  # 1 2 3 4 6 8 12 16 24 ...
# the nprobe values the recall tuning tries, smallest first (the capacity plan prices the same walk)


def tune_index(out_dir: str, manifest: IndexManifest, queries, truth, target: float,
               k_factor_max: int) -> tuple[dict[str, int], float, list]:
    """Smallest nprobe / efSearch (and PQ re-rank depth) reaching ``target`` recall@10 (else the
    best setting tried, with its recall)."""
    task_threads()
    with local_view(out_dir, manifest.files()) as local:
        vindex = VectorIndex.open(local, manifest, mmap=True)
        return _tune(vindex, manifest, np.asarray(_resolve(queries)), np.asarray(_resolve(truth)), target, k_factor_max)


def _tune(vindex: VectorIndex, manifest: IndexManifest, q: np.ndarray, truth: np.ndarray, target: float,
          k_factor_max: int) -> tuple[dict[str, int], float, list]:
    factory = manifest.factory
    if factory.startswith("IVF"):
        nlist = int(factory[3:].split(",")[0])
        grid = [{"nprobe": p} for p in NPROBE_STEPS if p <= nlist]
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

    def map(self, fn, calls: list[tuple], spread: bool = False, **opts) -> list:
        return [fn(*c) for c in calls]

    def stream(self, fn, calls: list[tuple], spread: bool = False, **opts):
        """``fn(*call)`` of every call, one at a time."""
        return (fn(*c) for c in calls)

    def one(self, fn, *args, **opts):
        return fn(*args)


class _Ray:
    """Runs stage functions as Ray tasks (retried when their worker dies)."""

    def __init__(self, store_path: str | None = None):
        import ray

        self.ray = ray
        # tasks reading a remote store get this process's endpoint and region (never credentials:
        # every node has its own chain)
        env = fs.forwarded_env() if store_path and fs.is_remote(store_path) else None
        self.opts: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}

    def put(self, x):
        return self.ray.put(x)

    def _remote(self, fn, **opts):
        return self.ray.remote(fn).options(max_retries=3, retry_exceptions=False, **self.opts, **opts)

    def map(self, fn, calls: list[tuple], spread: bool = False, **opts) -> list:
        """Run ``fn(*call)`` for every call; with ``spread``, call ``i`` prefers the ``i``-th
        node with CPUs (round robin, soft: another node takes it when that one is gone), so
        the heavy stages use every node instead of packing onto the first ones."""
        return self.ray.get(self._submit(fn, calls, spread, **opts))

    def stream(self, fn, calls: list[tuple], spread: bool = False, **opts):
        """Like :meth:`map`, but yields each result as its task completes (in any order), so
        the caller holds one result at a time."""
        refs = self._submit(fn, calls, spread, **opts)
        while refs:
            done, refs = self.ray.wait(refs, num_returns=1)
            yield self.ray.get(done[0])

    def _submit(self, fn, calls: list[tuple], spread: bool, **opts) -> list:
        if not spread:
            f = self._remote(fn, **opts)
            return [f.remote(*c) for c in calls]
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = sorted(n["NodeID"] for n in self.ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)
        refs = []
        for i, c in enumerate(calls):
            where = NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True) if nodes else "SPREAD"
            refs.append(self._remote(fn, scheduling_strategy=where, **opts).remote(*c))
        return refs

    def node_memory_bytes(self) -> int:
        """Ray's ``memory`` resource of the smallest alive node with CPUs (where a build task may run)."""
        mem = [n["Resources"].get("memory", 0) for n in self.ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0)]
        return int(min(mem)) if mem else 0

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


