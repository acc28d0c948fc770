"""Adapting to a new domain without its labels.

* :func:`domain_normalize`: centre and scale each domain's embeddings by that domain's own
  mean and standard deviation (computed from its unlabeled rows), so a classifier trained on
  one lab, species or assay sees another on the same footing.
* :class:`PseudoLabeler`: confidence-curriculum self-training. Fit a head on the labeled
  source; predict the unlabeled target; add the most confident fraction of target rows with
  their predicted labels (growing each round), always keeping every source row (replay, so
  the source is not forgotten); stop when the score on a labeled source validation split
  stops improving or the target is used up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def domain_normalize(x: np.ndarray, domains: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-domain standardisation using each domain's own rows (no labels needed)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for d in np.unique(np.asarray(domains, dtype=object).astype(str)):
        m = np.asarray(domains, dtype=object).astype(str) == d
        mu, sd = x[m].mean(axis=0), x[m].std(axis=0)
        out[m] = (x[m] - mu) / np.where(sd > eps, sd, 1.0)
    return out.astype(np.float32)


class PseudoLabeler:
    """Confidence-curriculum pseudo-labelling with source replay (see the module docstring).

    Args:
        make_head: returns a fresh, unfitted scikit-learn style classifier.
        fractions: share of the target added in successive rounds (most confident first).
        val_fraction: part of the source held out to decide when to stop.
        seed: split seed.
    """

    def __init__(self, make_head: Callable[[], Any], fractions=(0.2, 0.4, 0.6, 0.8), val_fraction: float = 0.2,
                 seed: int = 0):
        self.make_head, self.fractions, self.val_fraction, self.seed = make_head, tuple(fractions), val_fraction, seed

    def fit(self, xs: np.ndarray, ys: np.ndarray, xt: np.ndarray) -> "PseudoLabeler":
        """Fit on labeled source rows, then add confident target pseudo-labels round by round while
        source validation accuracy does not drop; returns ``self``."""
        rng = np.random.default_rng(self.seed)
        ys = np.asarray(ys, dtype=object)
        val = rng.random(len(xs)) < self.val_fraction
        tr = ~val
        head = self.make_head().fit(xs[tr], ys[tr])
        best_score = float(np.mean(head.predict(xs[val]) == ys[val]))
        self.history_ = [{"round": 0, "target_rows": 0, "source_val_accuracy": best_score}]
        for r, frac in enumerate(self.fractions, start=1):
            proba = head.predict_proba(xt)
            conf = proba.max(axis=1)
            take = np.argsort(-conf, kind="stable")[: int(round(frac * len(xt)))]
            pseudo = head.classes_[np.argmax(proba[take], axis=1)]
            cand = self.make_head().fit(np.vstack([xs[tr], xt[take]]), np.concatenate([ys[tr], pseudo]))
            score = float(np.mean(cand.predict(xs[val]) == ys[val]))
            self.history_.append({"round": r, "target_rows": int(len(take)), "source_val_accuracy": score})
            if score < best_score - 0.005:  # replay guard: stop before the source degrades
                break
            head, best_score = cand, max(best_score, score)
        self.head_ = head
        self.classes_ = head.classes_
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of the selected head."""
        return self.head_.predict_proba(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Most probable class of each row."""
        return self.head_.predict(x)
