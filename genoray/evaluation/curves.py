"""The numbers behind the evaluation report's plots, computed once and kept in its JSON (so
every plotted value can be checked against it): reliability bins and expected calibration
error, per-class precision-recall curves with average precision, and score histograms."""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_POINTS = 101  # a PR curve is thinned to at most this many points (its AP uses them all)


def reliability(y_true, proba: np.ndarray, classes, bins: int = 10) -> dict[str, Any]:
    """Confidence (top probability) vs accuracy in ``bins`` equal-width bins over [0, 1], and
    the expected calibration error ``sum_b n_b / n * |accuracy_b - confidence_b|``."""
    classes = np.asarray(classes, dtype=object)
    y = np.asarray(y_true, dtype=object)
    conf = proba.max(axis=1)
    correct = classes[np.argmax(proba, axis=1)] == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        c, a = float(conf[m].mean()), float(correct[m].mean())
        out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(m.sum()), "confidence": c,
                    "accuracy": a})
        ece += m.sum() / len(y) * abs(a - c)
    return {"bins": out, "ece": float(ece)}


def pr_curves(y_true, proba: np.ndarray, classes) -> dict[str, dict[str, Any]]:
    """One-vs-rest precision-recall curve of each class present in ``y_true`` (its
    probability as the score) and its average precision (scikit-learn's step-wise AP)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = np.asarray(y_true, dtype=object)
    out = {}
    for i, c in enumerate(classes):
        positive = y == c
        if not positive.any() or positive.all():
            continue
        precision, recall, _ = precision_recall_curve(positive, proba[:, i])
        keep = np.unique(np.linspace(0, len(recall) - 1, min(MAX_POINTS, len(recall))).round().astype(int))
        out[str(c)] = {"average_precision": float(average_precision_score(positive, proba[:, i])),
                       "recall": [float(v) for v in recall[keep]], "precision": [float(v) for v in precision[keep]]}
    return out


def histogram(values, bins: int = 20, lo: float = 0.0, hi: float = 1.0) -> dict[str, list]:
    """Counts of ``values`` in ``bins`` equal-width bins over [lo, hi] (values outside clipped in)."""
    v = np.clip(np.asarray(values, dtype=float), lo, hi)
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def evaluation_curves(y_true, proba: np.ndarray, uncalibrated: np.ndarray | None, ood_scores, classes,
                      bins: int = 10) -> dict[str, Any]:
    """Everything the evaluation report plots for the fused head: reliability after (and,
    given ``uncalibrated``, before) calibration, PR curves, and histograms of the top
    probability of right and wrong predictions and of the OOD score."""
    classes = np.asarray(classes, dtype=object)
    y = np.asarray(y_true, dtype=object)
    correct = classes[np.argmax(proba, axis=1)] == y
    conf = proba.max(axis=1)
    out: dict[str, Any] = {
        "reliability": {"calibrated": reliability(y, proba, classes, bins)},
        "pr_curves": pr_curves(y, proba, classes),
        "scores": {"confidence_correct": histogram(conf[correct]), "confidence_wrong": histogram(conf[~correct]),
                   "ood_score": histogram(ood_scores)},
    }
    if uncalibrated is not None:
        out["reliability"]["uncalibrated"] = reliability(y, uncalibrated, classes, bins)
    return out
