"""Classification metrics shared by the quickstart and the evaluation harness."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def classification_metrics(y_true, proba: np.ndarray, classes) -> dict[str, float]:
    """Accuracy, macro F1, MCC and AUROC (binary: positive = ``classes[1]``; multiclass:
    macro one-vs-rest). AUROC is NaN when the test set has a single class."""
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


def majority_proba(y_train, classes, n: int) -> np.ndarray:
    """The floor: every query gets the training class frequencies."""
    y_train = np.asarray(y_train, dtype=object)
    prior = np.array([(y_train == c).mean() for c in classes])
    return np.tile(prior, (n, 1))
