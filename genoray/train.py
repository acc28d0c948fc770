"""``train_head`` and ``evaluate_store``: fit the fused head on stored embeddings and score
kNN vote, linear head, fused head and the majority floor on a held-out split."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from genoray.config import HeadConfig
from genoray.heads import FusedHead, load_head, save_head
from genoray.index import VectorIndex
from genoray.index import read_manifest as read_index_manifest
from genoray.metrics import classification_metrics, detailed_metrics, majority_proba
from genoray.predictor import predict_vectors
from genoray.store import EmbeddingStore

log = logging.getLogger(__name__)


def train_head(store_path: str | Path, index_dir: str | Path, out_dir: str | Path,
               cfg: HeadConfig | None = None, split: str | None = "train") -> dict[str, Any]:
    """Fit a :class:`FusedHead` on the ``split`` rows of a store and save it to ``out_dir``.

    The index must have been built from the same store and split (checked by fingerprint and
    row count), because the head's kNN part votes over the index at prediction time.
    """
    cfg = cfg or HeadConfig()
    t0 = time.perf_counter()
    store = EmbeddingStore(store_path)
    emb = store.load(split)
    if any(label is None for label in emb.labels):
        raise ValueError(f"{store_path}: {sum(l is None for l in emb.labels)} rows of split {split!r} have no label")
    manifest = read_index_manifest(index_dir)  # the head's kNN part votes over this index
    if manifest.get("fingerprint") != store.fingerprint:
        raise ValueError(f"{index_dir} was built with encoder {manifest.get('fingerprint')}, store has {store.fingerprint}")
    if manifest["ntotal"] != len(emb):
        raise ValueError(f"{index_dir} holds {manifest['ntotal']} vectors but split {split!r} of the store has {len(emb)}")
    head = FusedHead.from_config(cfg).fit(emb.vectors, emb.labels)
    save_head(head, out_dir, encoder_fingerprint=store.fingerprint)
    from genoray.ood import fit_on_store

    fit_on_store(store, emb).save(out_dir)  # the per-query OOD score (ood.json + ood.npz)
    log.info("train_head %s: %d rows, classes %s, kNN weight %s; %.1f s", out_dir, len(emb),
             [str(c) for c in head.classes_], head.weight_, time.perf_counter() - t0)
    return {"head": str(out_dir), "rows": len(emb), "classes": [str(c) for c in head.classes_],
            "weight_knn": head.weight_, "calibration": head.calibration_, "C": head.C_, "seconds": round(time.perf_counter() - t0, 3)}


def evaluate_store(store_path: str | Path, index_dir: str | Path, head_dir: str | Path,
                   split: str | None = "test", train_split: str | None = "train",
                   detail: bool = False, bootstrap: int = 200, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Metrics of the majority floor, kNN vote, linear head and fused head on ``split``
    (``None``: every row; a row in the index never votes for itself).

    With ``detail``, each method also gets test ``n``, per-class precision/recall/F1, the
    confusion matrix and ``bootstrap``-resample 95% intervals
    (:func:`genoray.metrics.detailed_metrics`).
    """
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

    results = {
        "majority": score(majority_proba(index.labels, classes, len(test))),
        "knn_vote": score(head.knn_.proba_from_neighbours(sims, pos)),
        "linear": score(head.linear_.predict_proba(test.vectors)),
        "fused": score(proba),
    }
    results["fused"]["mean_ood_score"] = float(np.mean(head.ood_score(sims[:, -1])))
    return results
