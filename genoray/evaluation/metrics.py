"""Classification metrics shared by the quickstart and the evaluation harness."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def classification_metrics(y_true, proba: np.ndarray, classes) -> dict[str, float]:
    """Accuracy, macro F1, MCC and AUROC (binary: positive = ``classes[1]``; multiclass:
    macro one-vs-rest). AUROC is NaN when the test set has a single class."""
    import warnings

    with warnings.catch_warnings():  # one-class test sets are reported as NaN, not warned about per call
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return _classification_metrics(y_true, proba, classes)


def _classification_metrics(y_true, proba: np.ndarray, classes) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    classes = np.asarray(classes, dtype=object)
    y_true = np.asarray(y_true, dtype=object)
    y_pred = classes[np.argmax(proba, axis=1)]
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average="macro", labels=list(classes), zero_division=0)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
    }
    present = set(y_true)
    try:
        if len(classes) == 2:
            out["auroc"] = float(roc_auc_score(y_true == classes[1], proba[:, 1])) if len(present) == 2 else float("nan")
        else:
            keep = [i for i, c in enumerate(classes) if c in present]
            p = proba[:, keep] / np.clip(proba[:, keep].sum(axis=1, keepdims=True), 1e-12, None)
            out["auroc"] = float(roc_auc_score(y_true, p, multi_class="ovr", labels=list(classes[keep])))
    except ValueError:
        out["auroc"] = float("nan")
    return out


def ece(y_true, proba: np.ndarray, classes, bins: int = 15) -> float:
    """Top-label expected calibration error: equal-width confidence bins, the row-weighted
    mean of |mean confidence - accuracy| per bin."""
    p = np.asarray(proba, dtype=np.float64)
    conf = p.max(axis=1)
    right = np.asarray(classes, dtype=object)[p.argmax(axis=1)] == np.asarray(y_true, dtype=object)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - right[m].mean())
    return float(total)


def majority_proba(y_train, classes, n: int) -> np.ndarray:
    """The floor: every query gets the training class frequencies."""
    y_train = np.asarray(y_train, dtype=object)
    prior = np.array([(y_train == c).mean() for c in classes])
    return np.tile(prior, (n, 1))


# What each reported number means (printed by `genoray evaluate` / `quickstart` and put in --json).
DEFINITIONS = {
    "accuracy": "fraction of test rows whose predicted class (highest probability) is the true class",
    "f1": "macro F1: unweighted mean over classes of per-class F1 (harmonic mean of precision and recall)",
    "mcc": "Matthews correlation coefficient, multiclass form: -1..1, 0 = no better than chance",
    "auroc": ("area under the ROC curve; binary: of the positive class's probability; multiclass: mean of "
              "one-vs-rest AUROCs over the classes present; undefined (null) when the test split has one class"),
    "ci95": "95% percentile bootstrap interval: test rows resampled with replacement, metric recomputed",
    "accuracy_wilson95": ("Wilson score 95% interval of the accuracy: the correctly predicted rows of the scored "
                          "rows as a binomial proportion"),
    "sample": ("rows scored: a seeded class-stratified sample of at most max_test_rows rows of the split "
               "(every row when the split has no more), and the rows the split holds"),
    "per_class": "precision = TP/(TP+FP), recall = TP/(TP+FN), F1 and support (true rows) of each class",
    "confusion_matrix": "rows: true class, columns: predicted class, in the order of 'classes'",
    "knn_weight": ("w in the fused probability w * p_kNN + (1 - w) * p_linear (kNN vote vs logistic "
                   "regression; with --head trees|auto the rest may go to the tree part: the head's mixture), "
                   "chosen on a held-out part of the training split"),
    "calibration_T": ("temperature T of the calibration p^(1/T) (renormalised) applied to the fused "
                      "probabilities, fitted on the same held-out part; T > 1 softens over-confident "
                      "probabilities, T < 1 sharpens them; null when isotonic calibration won"),
    "majority": "floor: every test row gets the training class frequencies",
}


def bootstrap_ci(y, proba, classes, n: int, seed: int) -> dict[str, list[float | None]]:
    """95% percentile bootstrap intervals of :func:`classification_metrics` over ``n`` resamples
    of the rows (None where the metric is undefined in every resample)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=object)
    samples: dict[str, list[float]] = {}
    for _ in range(n):
        idx = rng.integers(0, len(y), size=len(y))
        for k, v in classification_metrics(y[idx], proba[idx], classes).items():
            samples.setdefault(k, []).append(v)
    out: dict[str, list[float | None]] = {}
    for k, values in samples.items():
        a = np.asarray(values, dtype=float)
        a = a[np.isfinite(a)]
        out[k] = [float(np.percentile(a, 2.5)), float(np.percentile(a, 97.5))] if len(a) else [None, None]
    return out


def detailed_metrics(y_true, proba: np.ndarray, classes, bootstrap: int = 200, seed: int = 0) -> dict:
    """:func:`classification_metrics` plus test n, per-class precision/recall/F1/support, the
    confusion matrix and bootstrap 95% intervals (``bootstrap`` resamples; 0 = none)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = np.asarray(classes, dtype=object)
    y_true = np.asarray(y_true, dtype=object)
    y_pred = classes[np.argmax(proba, axis=1)]
    out: dict = dict(classification_metrics(y_true, proba, classes))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(classes), zero_division=0)
    out["n"] = len(y_true)
    out["per_class"] = {str(c): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                 "support": int(s[i])} for i, c in enumerate(classes)}
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=list(classes)).tolist()
    if bootstrap:
        out["ci95"] = bootstrap_ci(y_true, proba, classes, bootstrap, seed)
    return out
