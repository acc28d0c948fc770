"""``train_head`` and ``evaluate_store``: fit the fused head on stored embeddings and score
kNN vote, linear head, tree head, fused head and the majority floor on a held-out split.

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
import pyarrow.parquet as pq

from genoray import schema
from genoray.config import HeadConfig
from genoray.heads import FusedHead, load_head, mixture_name, save_head, stratified_sample
from genoray.heads.common import _encode
from genoray.index import VectorIndex
from genoray.index import read_manifest as read_index_manifest
from genoray.metrics import classification_metrics, detailed_metrics, majority_proba
from genoray.predictor import predict_vectors
from genoray.store import Embeddings, EmbeddingStore, vectors_of


def _batches(store: EmbeddingStore, columns: list[str], rows: int = 16_384):
    """The store's rows as tables of at most ``rows`` rows (parts were verified when the store
    was opened), so reading never holds a whole part's embeddings."""
    for part in store.manifest.parts:
        from genoray import fs

        with fs.open_input(fs.join(store.path, part["file"])) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=columns):
                yield pa.Table.from_batches([batch])


def sample_rows(store: EmbeddingStore, split: str | None, ids: np.ndarray,
                dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, labels and float32 vectors of the store rows of ``split`` whose seq_id is in
    ``ids``, in store order, reading the store in batches of 16k rows."""
    wanted = pa.array([str(i) for i in ids], type=pa.string())
    got_ids, got_labels, got_vecs = [], [], []
    for t in _batches(store, [schema.SEQ_ID, schema.LABEL, schema.SPLIT, schema.EMBEDDING]):
        mask = pc.is_in(t[schema.SEQ_ID], value_set=wanted)
        if split is not None:
            mask = pc.and_(mask, pc.equal(t[schema.SPLIT], split))
        t = t.filter(mask)
        if t.num_rows:
            got_ids += t[schema.SEQ_ID].to_pylist()
            got_labels += t[schema.LABEL].to_pylist()
            got_vecs.append(vectors_of(t, dim).copy())
    if len(got_ids) != len(ids):
        raise ValueError(f"{store.path}: {len(ids)} sampled index ids but {len(got_ids)} matching store rows "
                         f"of split {split!r} (index and store out of step?)")
    vecs = np.concatenate(got_vecs) if got_vecs else np.zeros((0, dim), np.float32)
    return np.array(got_ids, dtype=object), np.array(got_labels, dtype=object), vecs

log = logging.getLogger(__name__)


def train_head(store_path: str | Path, index_dir: str | Path, out_dir: str | Path,
               cfg: HeadConfig | None = None, split: str | None = "train") -> dict[str, Any]:
    """Fit a :class:`FusedHead` on the ``split`` rows of a store and save it to ``out_dir``.

    The index must have been built from the same store and split (checked by fingerprint and
    row count), because the head's kNN part votes over the index at prediction time. At most
    ``cfg.max_rows`` rows (seeded, class-stratified) are read and used (see the module docstring).
    """
    from genoray import fs
    from genoray.index.core import MANIFEST as INDEX_MANIFEST

    if fs.is_remote(out_dir):  # written to a node-local temp dir, uploaded with head.json last
        res = fs.publish_dir(out_dir, "head.json", lambda d: train_head(store_path, index_dir, d, cfg, split))
        return {**res, "head": str(out_dir)}
    index_dir = fs.local_copy(index_dir, "indexes", INDEX_MANIFEST)
    cfg = cfg or HeadConfig()
    t0 = time.perf_counter()
    store = EmbeddingStore(store_path)
    manifest = read_index_manifest(index_dir)  # the head's kNN part votes over this index
    if manifest.get("fingerprint") != store.fingerprint:
        raise ValueError(f"{index_dir} was built with encoder {manifest.get('fingerprint')}, store has {store.fingerprint}")
    index = VectorIndex.load(index_dir)
    n_split = sum(int(pc.sum(pc.equal(t[schema.SPLIT], split)).as_py() or 0) if split is not None else t.num_rows
                  for t in store.iter_tables([schema.SPLIT]))
    if index.ntotal != n_split:
        raise ValueError(f"{index_dir} holds {index.ntotal} vectors but split {split!r} of the store has {n_split}")
    missing = sum(label is None for label in index.labels)
    if missing:
        raise ValueError(f"{store_path}: {missing} rows of split {split!r} have no label")
    classes = np.array(sorted(set(index.labels)), dtype=object)
    rows = stratified_sample(_encode(index.labels, classes), cfg.max_rows, cfg.seed)
    ids, labels, vectors = sample_rows(store, split, index.ids[rows], store.dim)
    from genoray.encoders import encoder_from_spec
    from genoray.ood import OODConfig, fit_on_store, store_sequences

    # built once, on first use (a transformers model is loaded once for both the length calibration and the OOD fit)
    encoder = functools.cache(lambda: encoder_from_spec(store.encoder_spec))
    # the length calibration re-reads the sequences of at most 2,000 validation rows (by id)
    head = FusedHead.from_config(cfg).fit(vectors, labels, index=index, ids=ids, sequences=lambda wanted: store_sequences(
        store, wanted), encoder=encoder)
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
    scorer = fit_on_store(store, ood_rows, ood_cfg, encoder=encoder)
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


def evaluate_store(store_path: str | Path, index_dir: str | Path, head_dir: str | Path,
                   split: str | None = "test", train_split: str | None = "train",
                   detail: bool = False, bootstrap: int = 200, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Metrics of the majority floor, kNN vote, linear head, tree head (when the head has one)
    and fused head on ``split`` (``None``: every row; a row in the index never votes for itself).

    With ``detail``, each method also gets test ``n``, per-class precision/recall/F1, the
    confusion matrix and ``bootstrap``-resample 95% intervals
    (:func:`genoray.metrics.detailed_metrics`).
    """
    from genoray import fs

    index_dir, head_dir = fs.local_copy(index_dir, "indexes", "manifest.json"), fs.local_copy(head_dir, "heads", "head.json")
    store = EmbeddingStore(store_path)
    test = store.load(split)
    if len(test) == 0:
        found = sorted({str(s) for s in store.load(None).splits})
        raise ValueError(f"{store_path}: no rows in split {split!r} (splits in the store: {found})")
    index = VectorIndex.load(index_dir)
    head = load_head(head_dir, encoder_fingerprint=store.fingerprint).attach_index(index)
    classes = head.classes_
    proba, sims, pos = predict_vectors(index, head, test.vectors, list(test.ids))

    def score(p):
        if detail:
            return detailed_metrics(test.labels, p, classes, bootstrap=bootstrap, seed=seed)
        return classification_metrics(test.labels, p, classes)

    parts = head.part_probas(test.vectors, sims, pos)
    results = {"majority": score(majority_proba(index.labels, classes, len(test)))}
    for name, p in parts.items():
        results[name] = score(p)
    results["fused"] = score(proba)
    results["fused"]["mean_ood_score"] = float(np.mean(head.ood_score(sims[:, -1])))
    return results
