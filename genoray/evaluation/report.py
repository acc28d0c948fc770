"""Scoring a trained head on a held-out split of a store: :func:`evaluate_store` (the metrics
of every method), :func:`evaluation_report` (what ``genoray evaluate`` reports) and
:func:`format_evaluation` (its text)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from genoray.config import EvaluateConfig
from genoray.embedding.store import EmbeddingStore
from genoray.evaluation.curves import evaluation_curves
from genoray.evaluation.metrics import DEFINITIONS, classification_metrics, detailed_metrics
from genoray.evaluation.sampling import Sample, read_sample, wilson_interval
from genoray.heads import load_head, mixture_name
from genoray.heads.persist import MANIFEST as HEAD_MANIFEST
from genoray.index import MANIFEST as INDEX_MANIFEST
from genoray.index import VectorIndex
from genoray.index import read_manifest as read_index_manifest
from genoray.infra import fs
from genoray.predict import predict_vectors

DEFINITION_ORDER = ("accuracy", "f1", "mcc", "auroc", "ci95", "accuracy_wilson95", "sample", "knn_weight",
                    "calibration_T", "majority")


def index_prior(index: VectorIndex, classes, n: int) -> np.ndarray:
    """The majority floor from the index's label column (Arrow counts, no per-row Python):
    every one of ``n`` rows gets the training class frequencies."""
    vc = pc.value_counts(index.labels.array.combine_chunks() if hasattr(index.labels.array, "combine_chunks")
                         else index.labels.array)
    freq = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
    prior = np.array([freq.get(str(c), 0) for c in classes], dtype=np.float64)
    return np.tile(prior / max(prior.sum(), 1.0), (n, 1))


def evaluate_store(store_path: str | Path, index_dir: str | Path, head_dir: str | Path,
                   cfg: EvaluateConfig | None = None, detail: bool = False,
                   arrays: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Metrics of the majority floor, kNN vote, linear head, tree head (when the head has one)
    and fused head on ``cfg.split`` (``None``: every row; a row in the index never votes for itself).

    With ``detail``, each method also gets test ``n``, per-class precision/recall/F1, the
    confusion matrix and ``cfg.bootstrap``-resample 95% intervals
    (:func:`genoray.evaluation.metrics.detailed_metrics`).
    """
    cfg = cfg or EvaluateConfig()
    split = cfg.split
    index_dir = fs.local_copy(index_dir, "indexes", INDEX_MANIFEST)
    head_dir = fs.local_copy(head_dir, "heads", HEAD_MANIFEST)
    store = EmbeddingStore(store_path)
    sample = read_sample(store, split, cfg.max_test_rows, cfg.seed)
    test = sample.rows
    if len(test) == 0:
        found = sorted({str(v) for t in store.iter_batches(["split"]) for v in pc.unique(t["split"]).to_pylist()})
        raise ValueError(f"{store_path}: no rows in split {split!r} (splits in the store: {found})")
    index = VectorIndex.load(index_dir, mmap=True)  # once, mapped: pages shared, read as searched
    head = load_head(head_dir, encoder_fingerprint=store.fingerprint).attach_index(index)
    classes = head.classes_
    proba, sims, pos = predict_vectors(index, head, test.vectors, list(test.ids))

    def score(p):
        m = detailed_metrics(test.labels, p, classes, bootstrap=cfg.bootstrap, seed=cfg.seed) if detail \
            else classification_metrics(test.labels, p, classes)
        right = int(np.sum(np.asarray(classes, dtype=object)[np.argmax(p, axis=1)] == np.asarray(test.labels, dtype=object)))
        return {**m, "accuracy_wilson95": list(wilson_interval(right, len(test))), "sample": sample.describe()}

    parts = head.part_probas(test.vectors, sims, pos)
    results = {"majority": score(index_prior(index, classes, len(test)))}
    for name, p in parts.items():
        results[name] = score(p)
    results["fused"] = score(proba)
    ood = head.ood_score(sims[:, -1])
    results["fused"]["mean_ood_score"] = float(np.mean(ood))
    if arrays is not None:
        parts_of = {"knn": "knn_vote", "linear": "linear", "trees": "trees"}
        uncalibrated = sum(w * parts[parts_of[n]] for n, w in head.mixture_.items() if w > 0)
        arrays.update(labels=np.asarray(test.labels, dtype=object), proba=proba, ood_score=ood, classes=classes,
                      uncalibrated=np.asarray(uncalibrated, dtype=float), sample=sample, head=head)
    return results


def evaluation_report(store_path: str | Path, index_dir: str | Path, head_dir: str | Path,
                      cfg: EvaluateConfig | None = None, curves: bool = False) -> dict[str, Any]:
    """What ``genoray evaluate`` prints: the split used and its size, the classes (and the
    positive class of a binary task), per method the metrics with bootstrap 95% intervals,
    per-class precision/recall/F1 and the confusion matrix, the fused head's kNN weight and
    calibration temperature, and what each of these means (:data:`genoray.evaluation.metrics.DEFINITIONS`).
    The training split is the one the index records. With ``curves``, also the numbers the
    HTML report plots (:func:`genoray.evaluation.curves.evaluation_curves`) under ``"curves"``."""
    cfg = cfg or EvaluateConfig()
    split = cfg.split
    index_dir = fs.local_copy(index_dir, "indexes", INDEX_MANIFEST)
    head_dir = fs.local_copy(head_dir, "heads", HEAD_MANIFEST)
    arrays: dict[str, Any] = {}
    methods = evaluate_store(store_path, index_dir, head_dir, cfg, detail=True, arrays=arrays)
    train_split = read_index_manifest(index_dir).split
    head = arrays["head"]
    sample: Sample = arrays["sample"]
    classes = [str(c) for c in head.classes_]
    counts = Counter(str(x) for x in sample.rows.labels)
    rep = {
        "store": str(store_path), "split": "all" if split is None else split, "train_split": train_split,
        "n": methods["fused"]["n"], "sample": {**sample.describe(), "max_test_rows": cfg.max_test_rows},
        "classes": classes,
        "positive_class": classes[1] if len(classes) == 2 else None,
        "class_counts": {c: counts.get(c, 0) for c in classes},
        "head": {"knn_weight": head.weight_, "calibration_T": head.calibration_, "k": head.k, "C": head.C_,
                 "mixture": head.mixture_, "calibration_method": head.calibration_method_},
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed},
        "methods": methods,
        "definitions": DEFINITIONS,
    }
    if curves:
        rep["curves"] = evaluation_curves(arrays["labels"], arrays["proba"], arrays["uncalibrated"],
                                          arrays["ood_score"], arrays["classes"])
    return rep


def _num(v: Any, ci: list | None = None) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    s = f"{v:.3f}"
    if ci and ci[0] is not None:
        s += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return s


def format_evaluation(rep: dict[str, Any], definitions: bool = True) -> str:
    """Plain text of an :func:`evaluation_report` (metrics, per-class table, confusion matrix, definitions)."""
    classes = rep["classes"]
    pos = f"; positive class for AUROC: {rep['positive_class']}" if rep["positive_class"] else \
        "; AUROC: one-vs-rest, macro mean"
    sample = rep.get("sample") or {}
    scored = "" if sample.get("complete", True) else \
        f"a seeded stratified sample of {sample['rows']} of its {sample['of']} rows; "
    lines = [f"test split: {rep['split']} ({scored}n = {rep['n']}; " +
             ", ".join(f"{c}: {n}" for c, n in rep["class_counts"].items()) + f"){pos}",
             (f"fused head: kNN weight {rep['head']['knn_weight']} (share of the kNN vote; the rest is the logistic "
              f"regression and/or trees: mixture {mixture_name(rep['head'].get('mixture') or {})}), "
              + (f"calibration T {rep['head']['calibration_T']:.2f} (temperature of p^(1/T); >1 softens), "
                 if rep['head']['calibration_T'] is not None else "calibration isotonic (per class, renormalised), ")
              + f"k = {rep['head']['k']}"),
             "",
             f"{'method':<10} {'accuracy [95% CI]':>24} {'macro F1 [95% CI]':>24} {'MCC':>7} {'AUROC [95% CI]':>24}"]
    undefined = set()
    for name, m in rep["methods"].items():
        ci = m.get("ci95", {})
        lines.append(f"{name:<10} {_num(m['accuracy'], ci.get('accuracy')):>24} {_num(m['f1'], ci.get('f1')):>24} "
                     f"{_num(m['mcc']):>7} {_num(m['auroc'], ci.get('auroc')):>24}")
        undefined |= {k for k in ("accuracy", "f1", "mcc", "auroc") if m[k] is None or m[k] != m[k]}
    if "auroc" in undefined:
        lines.append("AUROC n/a: undefined because the test split holds a single class (null in --json)")
    fused = rep["methods"]["fused"]
    lines += ["", "fused head, per class:", f"{'class':<16} {'precision':>9} {'recall':>9} {'F1':>9} {'support':>8}"]
    for c, row in fused["per_class"].items():
        lines.append(f"{c:<16} {row['precision']:>9.3f} {row['recall']:>9.3f} {row['f1']:>9.3f} {row['support']:>8}")
    width = max(8, *(len(c) for c in classes)) + 1
    lines += ["", "fused head, confusion matrix (rows: true, columns: predicted):",
              " " * width + "".join(f"{c:>{width}}" for c in classes)]
    for c, row in zip(classes, fused["confusion_matrix"]):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    lines.append(f"(95% CIs from {rep['bootstrap']['resamples']} bootstrap resamples, seed {rep['bootstrap']['seed']}; "
                 f"fused accuracy Wilson 95% interval {_num(fused['accuracy'], fused.get('accuracy_wilson95'))})")
    if definitions:
        lines += ["", "definitions:"] + [f"  {k}: {rep['definitions'][k]}" for k in DEFINITION_ORDER]
    return "\n".join(lines)
