"""``train_head``: fit the fused head (and its OOD scorer) on stored embeddings, over the index
its kNN part will vote with (scored on a held-out split by :mod:`genoray.evaluation.report`).

The head fit is bounded in memory and linear in time:

* the index is memory-mapped (``VectorIndex.load(mmap=True)``: IVF lists with FAISS's
  ``IO_FLAG_MMAP``, a Flat index's codes with ``IO_FLAG_MMAP_IFC``, the id tables as Arrow
  memory maps; an HNSW graph and a PQ index's re-rank vectors are read, the latter mapped by numpy);
* labels and ids come from the index (built from the same split); a seeded class-stratified
  sample of at most ``HeadConfig.max_rows`` rows is drawn from the mapped label column in
  streamed chunks (:func:`genoray.heads.common.stratified_positions`: no n-row array), and one
  pass over the store in 16k-row batches keeps only those rows' vectors and counts the split's
  rows (the check that index and store agree);
* the kNN vote's validation scores, the OOD reference and the length calibration come from
  searches of the saved index with each row's own entry excluded, each scanning at most about
  ``HeadConfig.fit_scan_rows`` vectors of an IVF index (:func:`genoray.heads.common.bounded_search`);
* the length calibration and the OOD scorer take their rows from that sample, and their
  sequences are read from the source files once, for those rows only (:class:`SampleSequences`).

So memory is the sample plus one batch, and time is the sample's fit plus one streamed pass
over the store (and at most one over the source files).
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
from genoray.heads import FusedHead, mixture_name, save_head
from genoray.heads.common import stratified_positions
from genoray.heads.persist import MANIFEST as HEAD_MANIFEST
from genoray.index import MANIFEST as INDEX_MANIFEST
from genoray.index import VectorIndex
from genoray.index import read_manifest as read_index_manifest
from genoray.infra import fs
from genoray.infra.rerun import guard_rerun
from genoray.scoring.ood import MIN_REFERENCE_ROWS, OODScorer

log = logging.getLogger(__name__)


def sample_rows(store: EmbeddingStore, split: str | None, ids: np.ndarray,
                dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Ids, labels and float32 vectors of the store rows of ``split`` whose seq_id is in
    ``ids``, in store order, and the number of rows of ``split`` in the store: one pass over
    the store in batches of 16k rows, holding only the wanted rows' vectors."""
    wanted = pa.array([str(i) for i in ids], type=pa.string())
    got_ids, got_labels, got_vecs, n_split = [], [], [], 0
    for t in store.iter_batches([SEQ_ID, LABEL, SPLIT, EMBEDDING]):
        in_split = pc.equal(t[SPLIT], split) if split is not None else None
        n_split += int(pc.sum(in_split).as_py() or 0) if in_split is not None else t.num_rows
        mask = pc.is_in(t[SEQ_ID], value_set=wanted)
        if in_split is not None:
            mask = pc.and_(mask, in_split)
        t = t.filter(mask)
        if t.num_rows:
            got_ids += t[SEQ_ID].to_pylist()
            got_labels += t[LABEL].to_pylist()
            got_vecs.append(vectors_of(t, dim).copy())
    vecs = np.concatenate(got_vecs) if got_vecs else np.zeros((0, dim), np.float32)
    return np.array(got_ids, dtype=object), np.array(got_labels, dtype=object), vecs, n_split


class SampleSequences:
    """The source sequences of a bounded sample's rows, read from the store's source files in
    one streamed pass (:meth:`EmbeddingStore.sequences`) the first time any are asked for, for
    every id of ``ids`` at once (the head's length calibration and the OOD fit ask for parts of
    the same sample), and kept: at most ``len(ids)`` sequences in memory. Calling it with ids
    returns their sequences (``None`` when a source is gone), as ``store.sequences`` does."""

    def __init__(self, store: EmbeddingStore, ids: np.ndarray):
        self.store, self.ids = store, ids
        self.found: dict[str, str] | None = None
        self.missing = False  # a source is gone or lacks an id: not read again
        self.reads = 0  # passes over the source files (1 at most when every asked id is in ``ids``)

    def __call__(self, ids) -> list[str] | None:
        """Sequences of ``ids`` (in that order), or ``None`` when a source cannot give them all."""
        wanted = [str(i) for i in ids]
        if self.missing:
            return None
        if self.found is None or not all(w in self.found for w in wanted):
            ask = list(dict.fromkeys([*(str(i) for i in self.ids), *wanted]))
            seqs = self.store.sequences(ask)
            self.reads += 1
            if seqs is None:
                self.missing = True
                return None
            self.found = dict(zip(ask, seqs))
        return [self.found[w] for w in wanted]


def fit_ood(emb: Embeddings, cfg: OODConfig, sequences, encoder) -> OODScorer:
    """Fit the per-query OOD scorer on the rows ``emb`` of a store (at most
    ``cfg.max_fit_rows + cfg.max_cal_rows`` of them: a seeded subsample when more). The
    sequences for length matching come from ``sequences`` (a callable from ids to sequences,
    ``None`` when they cannot be read: the scorer is then calibrated at the reference length
    only). ``encoder``: a zero-argument factory of the store's encoder, called only when the
    sequences were read."""
    keep = np.arange(len(emb.ids))
    cap = cfg.max_fit_rows + cfg.max_cal_rows
    if len(keep) > cap:  # the scorer never uses more rows: read and hold only these
        keep = np.sort(np.random.default_rng(cfg.seed + 2).choice(len(keep), size=cap, replace=False))
    seqs = sequences(emb.ids[keep])
    return OODScorer(cfg).fit(emb.vectors[keep], list(emb.labels[keep]), seqs, encoder() if seqs is not None else None)


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
    # mapped: IVF lists and a Flat index's codes are paged in as searched (shared page cache)
    index = VectorIndex.load(index_dir, mmap=True)
    labels = index.labels.array
    if labels.null_count:
        raise ValueError(f"{store_path}: {labels.null_count} rows of split {split!r} have no label")
    if index.ntotal < MIN_REFERENCE_ROWS:
        raise ValueError(f"{store_path}: split {split!r} has {index.ntotal} rows; a head needs at least "
                         f"{MIN_REFERENCE_ROWS} (its OOD reference): embed more labeled records into the store")
    classes = np.array(sorted(str(c) for c in pc.unique(labels).to_pylist()), dtype=object)
    rows = stratified_positions(labels, classes, cfg.max_rows, cfg.seed)
    ids, labels_s, vectors, n_split = sample_rows(store, split, index.ids[rows], store.dim)
    if index.ntotal != n_split:
        raise ValueError(f"{index_dir} holds {index.ntotal} vectors but split {split!r} of the store has {n_split}")
    if len(ids) != len(rows):
        raise ValueError(f"{store.path}: {len(rows)} sampled index ids but {len(ids)} matching store rows "
                         f"of split {split!r} (index and store out of step?)")

    # the OOD scorer's rows: a subset of the head's sample (all of it when small enough)
    ood_cfg = OODConfig()
    cap = ood_cfg.max_fit_rows + ood_cfg.max_cal_rows
    pick = np.arange(len(ids)) if len(ids) <= cap else np.sort(
        np.random.default_rng(ood_cfg.seed + 2).choice(len(ids), size=cap, replace=False))
    # the length calibration (validation rows of the sample) and the OOD fit read their
    # sequences in one pass over the source files, for the sample's rows only
    sequences = SampleSequences(store, ids[pick])
    # built once, on first use (a transformers model is loaded once for both the length calibration and the OOD fit)
    encoder = functools.cache(lambda: encoder_from_spec(store.encoder_spec, trust_remote_code))
    head = FusedHead.from_config(cfg).fit(vectors, labels_s, index=index, ids=ids, sequences=sequences,
                                          encoder=encoder)
    save_head(head, out_dir, encoder_fingerprint=store.fingerprint)

    # the per-query OOD score (ood.json + ood.npz)
    ood_rows = Embeddings(ids[pick], labels_s[pick], np.full(len(pick), None, dtype=object),
                          np.full(len(pick), split, dtype=object), vectors[pick])
    scorer = fit_ood(ood_rows, ood_cfg, sequences, encoder)
    scorer.n_reference_ = int(index.ntotal)
    scorer.save(out_dir)
    log.info("train_head %s: %d rows (%d used), classes %s, head %s; %.1f s", out_dir, index.ntotal, len(ids),
             [str(c) for c in head.classes_], mixture_name(head.mixture_), time.perf_counter() - t0)
    return {"head": str(out_dir), "rows": int(index.ntotal), "rows_used": int(len(ids)),
            "fit_nprobe": head.selection_.get("fit_nprobe"), "source_reads": sequences.reads,
            "classes": [str(c) for c in head.classes_], "head_mode": head.head, "chosen": mixture_name(head.mixture_),
            "tree_test": head.selection_.get("tree_test"), "mixture": head.mixture_, "weight_knn": head.weight_, "calibration": head.calibration_,
            "calibration_method": head.calibration_method_, "C": head.C_,
            "length_calibration": head.length_calibration_.describe() if head.length_calibration_ else None,
            "val_log_loss": head.selection_["val_log_loss"], "seconds": round(time.perf_counter() - t0, 3)}
