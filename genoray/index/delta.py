"""``extend_index``: add a store's new partitions to an existing index without retraining.

The nightly reindex calls this instead of :func:`genoray.index.build_index` when the store only
grew. The new index version reuses the old one's trained quantizer (``trained.faiss``) and its
shard files (hard-linked, their recorded sha256 reused rather than recomputed), and adds one
delta shard holding the new rows with global ids continuing after the old ``ntotal``.

It refuses (:class:`RetrainNeeded`, with the reason; the caller then rebuilds from scratch) when:

* the old index has no shared trained quantizer (built before format 3), or its partitions are
  not an unchanged prefix of the store (old rows were changed or removed);
* the caller's **drift rule** (``drift(reference_sample, new_sample)``, e.g. the shift test of
  :func:`genoray.evaluation.shift.drift_rule`) gives a reason for the new rows;
* **recall@10** on held-out queries against the exact top-10 over every row, with ``nprobe``
  re-tuned, stays below ``recall_floor``.

The exact top-10 costs O(delta), not O(n): the old version's recall calibration set
(``calibration.npz``, :mod:`genoray.index.calibration`: the full build's held-out queries and
their exact top-10) is searched exactly over the new partitions only and merged with the stored
top-10, which is exactly the top-10 over old + new rows; the new version stores the result. An
old index without one (or with one that does not check out) falls back to the full exact pass
over every row, with queries drawn from the new rows, and its new version gets a calibration
set from that pass. The report's ``predicted`` says which (``calibration``: ``"updated"`` or
``"full pass: <why>"``), how many rows the exact pass read (``exact_rows_read``: the delta
rows, or every row on the fallback) and its seconds (``exact_s``, with the calibration read
and written).

With ``use_ray`` the new partitions are added and the exact pass runs as Ray tasks, one per
partition it reads, spread over the nodes (:mod:`genoray.index.exact`); this process holds
O(queries x 10) of it. The report's ``predicted`` names the exact pass's tasks and nodes
(``exact_tasks``, ``exact_nodes``, ``exact_in_caller``: 0 on Ray); the manifest records its
nodes (``build.exact_nodes``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genoray.config import IndexConfig
from genoray.embedding.store import EmbeddingStore
from genoray.index.build import IndexReport, partition
from genoray.index.calibration import (
    ORACLE,
    ORACLE_MERGED,
    CalibrationSet,
    read_calibration,
    update_calibration,
    write_calibration,
)
from genoray.index.exact import exact_topk
from genoray.index.manifest import (
    MANIFEST,
    PARTS,
    BuildInfo,
    IndexManifest,
    RecallReport,
    read_manifest,
    write_manifest,
)
from genoray.index.stages import _Local, _pick_queries, _Ray, add_part, count_split, merge_shard, scan_part, tune_index
from genoray.infra import fs
from genoray.infra.artifacts import sha256_file, verify_files
from genoray.infra.links import copy_verified, link_or_copy
from genoray.infra.names import safe_join
from genoray.infra.staging import mark_shared

#: ``drift(reference_sample, new_sample)``: why the new rows need a retrained quantizer, or None
DriftRule = Callable[[np.ndarray, np.ndarray], "str | None"]


class RetrainNeeded(RuntimeError):
    """The index cannot be extended; the message says why (rebuild it)."""


def _link(src: Path, dst: Path, digest: str) -> None:
    """A hard link, or a copy checked against the recorded sha256 where the file system has none."""
    try:
        link_or_copy(src, dst, digest)
    except FileExistsError:
        copy_verified(src, dst, digest)


def extend_index(old_dir: str | Path, store_path: str | Path, out_dir: str | Path, recall_floor: float,
                 cfg: IndexConfig | None = None, drift: DriftRule | None = None, use_ray: bool = False,
                 stage: str | None = None) -> IndexReport:
    """A new index in the local directory ``out_dir`` = ``old_dir`` + the store's partitions it
    lacks (see module doc). ``use_ray``: the new partitions are added by Ray tasks spread over
    the cluster's nodes, which hand their files on through ``stage`` (a URI, or a directory
    every node sees; default ``out_dir/parts``); the one delta shard is merged here."""
    cfg = cfg or IndexConfig()
    t0 = time.perf_counter()
    old, out = Path(old_dir), Path(out_dir)
    m = read_manifest(old)
    if not m.shared_quantizer or not m.partitions or m.trained is None:
        raise RetrainNeeded(f"{old}: a {m.factory} index: nothing trained to reuse, rebuilt" if not
                            m.factory.startswith("IVF") else f"{old}: built without a shared trained quantizer "
                            f"(format {m.format_version}); rebuild once")
    store = EmbeddingStore(store_path, verify=False)  # verified below, by tasks
    store_path = str(store.path) if fs.is_remote(store.path) else str(Path(store_path).resolve())
    if store.fingerprint != m.fingerprint or store.dim != m.dim:
        raise RetrainNeeded(f"{store_path}: encoder fingerprint {store.fingerprint} != index {m.fingerprint}")
    if m.split != cfg.split:
        raise RetrainNeeded(f"{old}: indexes split {m.split!r}, asked for {cfg.split!r}")
    parts = store.manifest.parts
    indexed = {(p.file, p.part_sha256) for p in m.partitions}
    if not indexed <= {(p.file, p.sha256) for p in parts}:
        raise RetrainNeeded(f"{store_path}: rows the index holds were changed or removed from the store")
    new_parts = [p for p in parts if (p.file, p.sha256) not in indexed]
    verify_files(old, {m.trained.file: m.trained.sha256})
    faiss_blob = np.fromfile(safe_join(old, m.trained.file, old / MANIFEST), dtype=np.uint8)
    d, n_old = m.dim, m.ntotal
    ex: Any = _Ray(store_path) if use_ray else _Local()
    store.verify(run=lambda fn, calls: ex.map(fn, calls, spread=True, num_cpus=1))  # parts hashed in parallel tasks

    # the new rows, as partitions with gids after the old ones
    delta, gid = [], n_old
    for i, p in enumerate(new_parts):
        c = p.rows_in(cfg.split)  # as recorded when the part was written; counted for older stores
        c = count_split(store_path, p.file, cfg.split) if c is None else c
        delta.append({"key": f"d{i:05d}", "file": p.file, "part_sha256": p.sha256, "offset": 0, "rows": c,
                      "gid_start": gid})
        gid += c
    n_new = gid - n_old
    if n_new == 0:
        raise RetrainNeeded(f"{store_path}: no new rows of split {cfg.split!r} to add")

    # drift rule 1: the caller's test of the new rows against a sample of the old rows
    new_scans = ex.map(scan_part, [(store_path, p.file, cfg.split, d, min(1.0, 4000 / n_new), cfg.recall_queries,
                                    cfg.seed + i) for i, p in enumerate(new_parts)], spread=True, num_cpus=1)
    if drift is not None:
        old_sample = ex.map(scan_part, [(store_path, p.file, cfg.split, d, min(1.0, 4000 / max(n_old, 1)), 0,
                                         cfg.seed + i) for i, p in enumerate(m.partitions[:: max(1, len(m.partitions) // 8)])],
                            spread=True, num_cpus=1)
        reason = drift(np.concatenate([s[1]["sample"] for s in old_sample]),
                       np.concatenate([s[1]["sample"] for s in new_scans]))
        if reason:
            raise RetrainNeeded(f"{reason} in the {n_new} new rows; retrain the quantizer")

    # add the delta with the old trained quantizer and write it as one more shard
    out.mkdir(parents=True, exist_ok=True)
    pdir = stage or str(out / PARTS)
    fs.makedirs(pdir)
    shared = mark_shared(pdir) if use_ray else ""
    ivf = m.factory.startswith("IVF")
    refine = any(s.refine for s in m.shards)
    template = ex.put(faiss_blob)
    added = ex.map(add_part, [(store_path, {**p, "template": m.trained.sha256}, cfg.split, d, template, pdir, ivf,
                               refine, shared) for p in delta], num_cpus=cfg.add_cpus, spread=True)
    meta = merge_shard(str(out), len(m.shards), added, faiss_blob, m.factory, True, refine, parts_dir=pdir)
    fs.delete_dir(pdir)
    for s in m.shards:
        for f, sha in s.sha256.items():
            _link(Path(safe_join(old, f, old / MANIFEST)), out / f, sha)
    _link(Path(safe_join(old, m.trained.file, old / MANIFEST)), out / m.trained.file, m.trained.sha256)
    manifest = dataclasses.replace(m, ntotal=n_old + n_new, shards=(*m.shards, meta), source_store=store_path,
                                   clean=store.clean_policy or m.clean,
                                   partitions=(*m.partitions, *(partition(p) for p in delta)))

    # drift rule 2: recall on held-out queries against the exact top-10 over every row, nprobe re-tuned;
    # O(delta) from the old version's calibration set, else the full exact pass (one task per partition)
    t_exact = time.perf_counter()
    cal, why = read_calibration(old, m)
    if cal is not None and m.calibration is not None:
        cal, ran = update_calibration(ex, store_path, cal, delta, cfg.split, d, num_cpus=cfg.add_cpus)
        calibration = write_calibration(out, cal, m.calibration.queries_from, ORACLE_MERGED, m.calibration.updates + 1)
        how = "updated"
    else:
        queries, from_outside = _pick_queries(ex, [s[1] for s in new_scans], cfg)
        all_parts = [*(dataclasses.asdict(p) for p in m.partitions), *delta]
        sims, ids, ran = exact_topk(ex, store_path, all_parts, cfg.split, d, ex.put(queries), 10, num_cpus=cfg.add_cpus)
        cal = CalibrationSet(queries, sims, ids, n_old + n_new)
        calibration = write_calibration(out, cal, "new rows outside the indexed split" if from_outside else "new rows")
        how = f"full pass: {why}"
    t_exact = time.perf_counter() - t_exact
    params, recall, _ = tune_index(str(out), manifest, cal.queries, cal.ids, max(recall_floor, cfg.target_recall),
                                   cfg.refine_k_factor_max)
    if recall < recall_floor:
        raise RetrainNeeded(f"recall@10 {recall:.3f} with the delta is below the floor {recall_floor} at every nprobe")
    manifest = dataclasses.replace(
        manifest, format_version=IndexManifest.FORMAT_VERSION, search_params=params, calibration=calibration,
        recall_at_10=RecallReport(value=recall, queries=len(cal.queries), target=cfg.target_recall, floor=recall_floor,
                                  queries_from=calibration.queries_from,
                                  oracle=ORACLE_MERGED if how == "updated" else ORACLE),
        build=BuildInfo(incremental=True, base=str(old.resolve()), delta_rows=n_new,
                        shift={"tested": drift is not None, "is_shift": False}, exact_nodes=ran.nodes))
    write_manifest(out, manifest)
    return IndexReport(str(out), m.factory, len(manifest.shards), n_old + n_new, d, recall,
                       manifest.search_params, False, round(time.perf_counter() - t0, 3), 0, len(delta), 0,
                       sorted({str(a["node_id"]) for a in added}),
                       float(meta.peak_rss_mb or 0.0), {"delta_rows": n_new, "sha256_reused": sum(
                           len(s.sha256) for s in m.shards), "delta_sha256": sha256_file(out / meta.index),
                           "exact_tasks": ran.tasks, "exact_in_caller": ran.in_caller,
                           "exact_nodes": list(ran.nodes), "exact_peak_task_rss_mb": ran.peak_task_rss_mb,
                           "exact_rows_read": ran.rows, "exact_s": round(t_exact, 3), "calibration": how})
