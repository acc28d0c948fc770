"""``extend_index``: add a store's new partitions to an existing index without retraining.

The nightly reindex calls this instead of :func:`genoray.index.build_index` when the store only
grew. The new index version reuses the old one's trained quantizer (``trained.faiss``) and its
shard files (hard-linked, their recorded sha256 reused rather than recomputed), and adds one
delta shard holding the new rows with global ids continuing after the old ``ntotal``.

It refuses (:class:`RetrainNeeded`, with the reason; the caller then rebuilds from scratch) when:

* the old index has no shared trained quantizer (built before format 3), or its partitions are
  not an unchanged prefix of the store (old rows were changed or removed);
* the **shift test** (:class:`genoray.shift.ShiftDetector`, reference = a sample of the old rows)
  flags the new rows;
* **recall@10** on held-out queries (exact oracle streamed over every row), with ``nprobe``
  re-tuned, stays below ``recall_floor``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from genoray import fs
from genoray.artifacts import read_json, sha256_file, verify_files, write_json
from genoray.config import IndexConfig
from genoray.index.build import IndexReport, clean_json
from genoray.index.core import MANIFEST, IndexManifest, merge_topk
from genoray.index.stages import _Local, _pick_queries, add_part, exact_part, merge_shard, scan_part, tune_index


class RetrainNeeded(RuntimeError):
    """The index cannot be extended; the message says why (rebuild it)."""


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def extend_index(old_dir: str | Path, store_path: str | Path, out_dir: str | Path, cfg: IndexConfig | None = None,
                 recall_floor: float = 0.9, shift_alpha: float = 0.05, use_ray: bool = False) -> IndexReport:
    """A new index in ``out_dir`` = ``old_dir`` + the store's partitions it lacks (see module doc)."""
    from genoray.shift import ShiftConfig, ShiftDetector
    from genoray.store import EmbeddingStore

    cfg = cfg or IndexConfig()
    t0 = time.perf_counter()
    old, out = Path(old_dir), Path(out_dir)
    m = read_json(old / MANIFEST)
    if not m.get("shared_quantizer") or "partitions" not in m:
        raise RetrainNeeded(f"{old}: built without a shared trained quantizer (format {m.get('format_version')}); "
                            "rebuild once")
    store = EmbeddingStore(store_path)
    store_path = str(store.path) if fs.is_remote(store.path) else str(Path(store_path).resolve())
    if store.fingerprint != m.get("fingerprint") or store.dim != m["dim"]:
        raise RetrainNeeded(f"{store_path}: encoder fingerprint {store.fingerprint} != index {m.get('fingerprint')}")
    if m.get("split") != cfg.split:
        raise RetrainNeeded(f"{old}: indexes split {m.get('split')!r}, asked for {cfg.split!r}")
    parts = store.manifest["parts"]
    indexed = {(p["file"], p["part_sha256"]) for p in m["partitions"]}
    store_keys = [(p["file"], p["sha256"]) for p in parts]
    if not indexed <= set(store_keys):
        raise RetrainNeeded(f"{store_path}: rows the index holds were changed or removed from the store")
    new_parts = [p for p in parts if (p["file"], p["sha256"]) not in indexed]
    verify_files(old, {m["trained"]["file"]: m["trained"]["sha256"]})
    faiss_blob = np.fromfile(old / m["trained"]["file"], dtype=np.uint8)
    d, n_old = int(m["dim"]), int(m["ntotal"])
    ex = _Local()

    # the new rows, as partitions with gids after the old ones
    counts = []
    for p in new_parts:
        col = fs.read_table(fs.join(store.path, p["file"]), columns=["split"])["split"]
        counts.append(p["rows"] if cfg.split is None else int(pc.sum(pc.equal(col, cfg.split)).as_py() or 0))
    delta, gid = [], n_old
    for i, (p, c) in enumerate(zip(new_parts, counts)):
        delta.append({"key": f"d{i:05d}", "file": p["file"], "part_sha256": p["sha256"], "offset": 0, "rows": c,
                      "gid_start": gid})
        gid += c
    n_new = gid - n_old
    if n_new == 0:
        raise RetrainNeeded(f"{store_path}: no new rows of split {cfg.split!r} to add")

    # drift rule 1: shift test of the new rows against a sample of the old rows
    rng_seed = cfg.seed
    old_sample = [scan_part(store_path, p["file"], cfg.split, d, min(1.0, 4000 / max(n_old, 1)), 0, rng_seed + i)[1]
                  ["sample"] for i, p in enumerate(m["partitions"][:: max(1, len(m["partitions"]) // 8)])]
    new_scans = [scan_part(store_path, p["file"], cfg.split, d, min(1.0, 4000 / n_new), cfg.recall_queries, rng_seed + i)
                 for i, p in enumerate(new_parts)]
    new_sample = np.concatenate([s[1]["sample"] for s in new_scans])
    ref = np.concatenate(old_sample)
    shift = ShiftDetector(ShiftConfig(max_samples=1000, alpha=shift_alpha, seed=cfg.seed)).fit(ref).score(new_sample)
    if shift.is_shift:
        raise RetrainNeeded(f"the shift test flags the {n_new} new rows (MMD p {shift.mmd_p_value:.3g}, classifier "
                            f"p {shift.c2st_p_value:.3g}, kNN-OOD p {shift.ood_p_value:.3g}); retrain the quantizer")

    # add the delta with the old trained quantizer and write it as one more shard
    out.mkdir(parents=True, exist_ok=True)
    pdir = out / "parts"
    pdir.mkdir(exist_ok=True)
    ivf = m["factory"].startswith("IVF")
    refine = any(s.get("refine") for s in m["shards"])
    template_sha = m["trained"]["sha256"]
    added = [add_part(store_path, {**p, "template": template_sha}, cfg.split, d, faiss_blob, str(pdir), ivf, refine)
             for p in delta]
    shard_no = len(m["shards"])
    meta = merge_shard(str(out), shard_no, added, faiss_blob, m["factory"], True, refine)
    shutil.rmtree(pdir, ignore_errors=True)
    for s in m["shards"]:
        for f in s["sha256"]:
            _link(old / f, out / f)
    _link(old / m["trained"]["file"], out / m["trained"]["file"])
    manifest = {**m, "ntotal": n_old + n_new, "shards": [*m["shards"], meta], "source_store": store_path,
                "clean": clean_json(store.clean_policy) or m.get("clean"),
                "partitions": [*m["partitions"], *[{k: p[k] for k in ("key", "file", "part_sha256", "offset", "rows",
                                                                      "gid_start")} for p in delta]]}

    # drift rule 2: recall on held-out queries against exact search over every row, nprobe re-tuned
    arrays = [s[1] for s in new_scans]
    queries, from_outside = _pick_queries(ex, arrays, cfg)
    all_parts = [*m["partitions"], *delta]
    exact = [exact_part(store_path, p, cfg.split, d, queries, 10) for p in all_parts]
    truth = merge_topk([e[0] for e in exact], [e[1] for e in exact], 10)[1]
    params, recall, _ = tune_index(str(out), manifest, queries, truth, max(recall_floor, cfg.target_recall),
                                   cfg.refine_k_factor_max)
    if recall < recall_floor:
        raise RetrainNeeded(f"recall@10 {recall:.3f} with the delta is below the floor {recall_floor} at every nprobe")
    manifest["search_params"] = params
    manifest["recall_at_10"] = {"value": recall, "queries": len(queries), "target": cfg.target_recall,
                                "floor": recall_floor,
                                "queries_from": "new rows outside the indexed split" if from_outside else "new rows",
                                "oracle": "exact cosine over all indexed rows"}
    manifest["build"] = {"incremental": True, "base": str(old.resolve()), "delta_rows": n_new,
                         "shift": {"is_shift": bool(shift.is_shift)}}
    write_json(out / MANIFEST, IndexManifest.from_json(manifest).to_json())
    return IndexReport(str(out), m["factory"], len(manifest["shards"]), n_old + n_new, d, recall,
                       manifest["search_params"], False, round(time.perf_counter() - t0, 3), 0, len(delta), 0, ["local"],
                       float(meta.get("peak_rss_mb", 0.0)), {"delta_rows": n_new, "sha256_reused": sum(
                           len(s["sha256"]) for s in m["shards"]), "delta_sha256": sha256_file(out / meta["index"])})
