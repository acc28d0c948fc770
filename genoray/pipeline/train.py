"""``train_head``: fit the fused head (and its OOD scorer) on stored embeddings, over the index
its kNN part will vote with (scored on a held-out split by :mod:`genoray.evaluation.report`).

The head fit reads the store in bounded memory: labels and ids come from the index (built
from the same split), a seeded class-stratified sample of at most ``HeadConfig.max_rows`` rows
is chosen from them, and only those rows' vectors are kept, reading 16k-row batches. The kNN
vote's validation scores and the OOD reference come from searches of the saved index with
each row's own entry excluded. So time and memory grow with the index, not with rows squared.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genoray.config import HeadConfig, OODConfig
from genoray.embedding.store import EMBEDDING, LABEL, SEQ_ID, SPLIT, Embeddings, EmbeddingStore, vectors_of
from genoray.encoders import encoder_from_spec
from genoray.heads import FusedHead, mixture_name, save_head, stratified_sample
from genoray.heads.common import _encode
from genoray.heads.persist import MANIFEST as HEAD_MANIFEST
from genoray.index import MANIFEST as INDEX_MANIFEST
from genoray.index import VectorIndex
from genoray.index import read_manifest as read_index_manifest
from genoray.infra import fs
from genoray.infra.rerun import guard_rerun
from genoray.scoring.ood import OODScorer

log = logging.getLogger(__name__)


def sample_rows(store: EmbeddingStore, split: str | None, ids: np.ndarray,
                dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, labels and float32 vectors of the store rows of ``split`` whose seq_id is in
    ``ids``, in store order, reading the store in batches of 16k rows."""
    wanted = pa.array([str(i) for i in ids], type=pa.string())
    got_ids, got_labels, got_vecs = [], [], []
    for t in store.iter_batches([SEQ_ID, LABEL, SPLIT, EMBEDDING]):
        mask = pc.is_in(t[SEQ_ID], value_set=wanted)
        if split is not None:
            mask = pc.and_(mask, pc.equal(t[SPLIT], split))
        t = t.filter(mask)
        if t.num_rows:
            got_ids += t[SEQ_ID].to_pylist()
            got_labels += t[LABEL].to_pylist()
            got_vecs.append(vectors_of(t, dim).copy())
    if len(got_ids) != len(ids):
        raise ValueError(f"{store.path}: {len(ids)} sampled index ids but {len(got_ids)} matching store rows "
                         f"of split {split!r} (index and store out of step?)")
    vecs = np.concatenate(got_vecs) if got_vecs else np.zeros((0, dim), np.float32)
    return np.array(got_ids, dtype=object), np.array(got_labels, dtype=object), vecs


def fit_ood(store: EmbeddingStore, emb: Embeddings, cfg: OODConfig, encoder) -> OODScorer:
    """Fit the per-query OOD scorer on the rows ``emb`` of a store. The sequences for length
    matching are re-read from the store's source files (by id); when a source is gone, the
    scorer is calibrated at the reference length only. ``encoder``: a zero-argument factory of
    the store's encoder, called only when the sequences were read."""
    keep = np.arange(len(emb.ids))
    cap = cfg.max_fit_rows + cfg.max_cal_rows
    if len(keep) > cap:  # the scorer never uses more rows: read and hold only these
        keep = np.sort(np.random.default_rng(cfg.seed + 2).choice(len(keep), size=cap, replace=False))
    seqs = store.sequences(emb.ids[keep])
    scorer = OODScorer(cfg).fit(emb.vectors[keep], list(emb.labels[keep]), seqs, encoder() if seqs is not None else None)
    scorer.n_reference_ = len(emb.ids)
    return scorer


def train_head(store_path: str | Path, index_dir: str | Path, out_dir: str | Path,
               cfg: HeadConfig | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Fit a :class:`FusedHead` on the rows of a store that the index holds (the split its
    manifest records) and save it, with its OOD scorer, to ``out_dir``.

    The index must have been built from the same store (checked by fingerprint and row count),
    because the head's kNN part votes over the index at prediction time. At most
    ``cfg.max_rows`` rows (seeded, class-stratified) are read and used (see the module docstring).
    ``trust_remote_code``: the command's decision to run the store's transformers model's own
    code (the store's recorded value never enables it).
    """
    if fs.is_remote(out_dir):  # written to a node-local temp dir, uploaded with head.json last
        res = fs.publish_dir(out_dir, HEAD_MANIFEST, lambda d: train_head(store_path, index_dir, d, cfg, trust_remote_code))
        return {**res, "head": str(out_dir)}
    index_dir = fs.local_copy(index_dir, "indexes", INDEX_MANIFEST)
    cfg = cfg or HeadConfig()
    guard_rerun(out_dir, "head", {"store": store_path, "index": index_dir}, cfg, cfg.overwrite)  # other inputs: refused
    t0 = time.perf_counter()
    store = EmbeddingStore(store_path)
    manifest = read_index_manifest(index_dir)  # the head's kNN part votes over this index
    if manifest.fingerprint != store.fingerprint:
        raise ValueError(f"{index_dir} was built with encoder {manifest.fingerprint}, store has {store.fingerprint}")
    split = manifest.split
    index = VectorIndex.load(index_dir)
    n_split = sum(int(pc.sum(pc.equal(t[SPLIT], split)).as_py() or 0) if split is not None else t.num_rows
                  for t in store.iter_tables([SPLIT]))
    if index.ntotal != n_split:
        raise ValueError(f"{index_dir} holds {index.ntotal} vectors but split {split!r} of the store has {n_split}")
    missing = sum(label is None for label in index.labels)
    if missing:
        raise ValueError(f"{store_path}: {missing} rows of split {split!r} have no label")
    classes = np.array(sorted(set(index.labels)), dtype=object)
    rows = stratified_sample(_encode(index.labels, classes), cfg.max_rows, cfg.seed)
    ids, labels, vectors = sample_rows(store, split, index.ids[rows], store.dim)

    # built once, on first use (a transformers model is loaded once for both the length calibration and the OOD fit)
    encoder = functools.cache(lambda: encoder_from_spec(store.encoder_spec, trust_remote_code))
    # the length calibration re-reads the sequences of at most 2,000 validation rows (by id)
    head = FusedHead.from_config(cfg).fit(vectors, labels, index=index, ids=ids, sequences=store.sequences,
                                          encoder=encoder)
    save_head(head, out_dir, encoder_fingerprint=store.fingerprint)

    # the per-query OOD score (ood.json + ood.npz), fitted on at most the rows the scorer uses
    ood_cfg = OODConfig()
    cap = ood_cfg.max_fit_rows + ood_cfg.max_cal_rows
    if index.ntotal <= min(cap, cfg.max_rows):  # the head already read every row
        ood_rows = Embeddings(ids, labels, np.full(len(ids), None, dtype=object), np.full(len(ids), split, dtype=object),
                              vectors)
    else:
        pick = np.arange(index.ntotal) if index.ntotal <= cap else np.sort(
            np.random.default_rng(ood_cfg.seed + 2).choice(index.ntotal, size=cap, replace=False))
        o_ids, o_labels, o_vecs = sample_rows(store, split, index.ids[pick], store.dim)
        ood_rows = Embeddings(o_ids, o_labels, np.full(len(o_ids), None, dtype=object),
                              np.full(len(o_ids), split, dtype=object), o_vecs)
    scorer = fit_ood(store, ood_rows, ood_cfg, encoder)
    scorer.n_reference_ = int(index.ntotal)
    scorer.save(out_dir)
    log.info("train_head %s: %d rows (%d used), classes %s, head %s; %.1f s", out_dir, index.ntotal, len(ids),
             [str(c) for c in head.classes_], mixture_name(head.mixture_), time.perf_counter() - t0)
    return {"head": str(out_dir), "rows": int(index.ntotal), "rows_used": int(len(ids)),
            "classes": [str(c) for c in head.classes_], "head_mode": head.head, "chosen": mixture_name(head.mixture_),
            "tree_test": head.selection_.get("tree_test"), "mixture": head.mixture_, "weight_knn": head.weight_, "calibration": head.calibration_,
            "calibration_method": head.calibration_method_, "C": head.C_,
            "length_calibration": head.length_calibration_.describe() if head.length_calibration_ else None,
            "val_log_loss": head.selection_["val_log_loss"], "seconds": round(time.perf_counter() - t0, 3)}
