"""``train_head`` and ``evaluate_store``: fit the fused head on stored embeddings and score
kNN vote, linear head, fused head and the majority floor on a held-out split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from genoray.artifacts import read_json
from genoray.config import HeadConfig
from genoray.heads import FusedHead, load_head, save_head
from genoray.index import VectorIndex
from genoray.metrics import classification_metrics, majority_proba
from genoray.predictor import predict_vectors
from genoray.store import EmbeddingStore


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
    manifest = read_json(Path(index_dir) / "manifest.json")  # the head's kNN part votes over this index
    if manifest.get("fingerprint") != store.fingerprint:
        raise ValueError(f"{index_dir} was built with encoder {manifest.get('fingerprint')}, store has {store.fingerprint}")
    if manifest["ntotal"] != len(emb):
        raise ValueError(f"{index_dir} holds {manifest['ntotal']} vectors but split {split!r} of the store has {len(emb)}")
    head = FusedHead.from_config(cfg).fit(emb.vectors, emb.labels)
    save_head(head, out_dir, encoder_fingerprint=store.fingerprint)
    from genoray.ood import fit_on_store

    fit_on_store(store, emb).save(out_dir)  # the per-query OOD score (ood.json + ood.npz)
    return {"head": str(out_dir), "rows": len(emb), "classes": [str(c) for c in head.classes_],
            "weight_knn": head.weight_, "calibration": head.calibration_, "C": head.C_, "seconds": round(time.perf_counter() - t0, 3)}


def evaluate_store(store_path: str | Path, index_dir: str | Path, head_dir: str | Path,
                   split: str = "test", train_split: str | None = "train") -> dict[str, dict[str, float]]:
    """Metrics of the majority floor, kNN vote, linear head and fused head on ``split``."""
    store = EmbeddingStore(store_path)
    test = store.load(split)
    if len(test) == 0:
        raise ValueError(f"{store_path}: no rows in split {split!r}")
    index = VectorIndex.load(index_dir)
    head = load_head(head_dir, encoder_fingerprint=store.fingerprint).attach_index(index)
    classes = head.classes_
    proba, sims, pos = predict_vectors(index, head, test.vectors, list(test.ids))
    results = {
        "majority": classification_metrics(test.labels, majority_proba(index.labels, classes, len(test)), classes),
        "knn_vote": classification_metrics(test.labels, head.knn_.proba_from_neighbours(sims, pos), classes),
        "linear": classification_metrics(test.labels, head.linear_.predict_proba(test.vectors), classes),
        "fused": classification_metrics(test.labels, proba, classes),
    }
    results["fused"]["mean_ood_score"] = float(np.mean(head.ood_score(sims[:, -1])))
    return results

