"""How the fused head chooses its mixture of parts on validation data, and the do-no-harm
rule by which ``head="auto"`` keeps a tree part.

Mixtures are weights on a 0.1 grid over the parts a head mode allows, scored by validation
log-loss. For ``auto`` the best mixture with trees competes with the best without them
(kNN + linear, the default head), and the tree mixture is kept only when it wins an honest,
cross-fitted comparison on both log-loss and MCC (see :func:`keep_trees`).
"""

from __future__ import annotations

import numpy as np

from genoray.heads.common import _log_loss, _stratified_split

PARTS = ("knn", "linear", "trees")
HEAD_MODES = {"linear": ("knn", "linear"), "trees": ("knn", "trees"), "auto": PARTS}
TREE_Z = 2.0  # auto keeps trees only if they lower cross-fitted log-loss by > 2 standard errors
TREE_MCC_MARGIN = 0.0  # ... and their cross-fitted MCC is at least the kNN + linear head's plus this


def mixtures(parts: tuple[str, ...]) -> list[dict[str, float]]:
    """Weights on a 0.1 grid over ``parts`` summing to 1 (kNN weight ascending first, as the
    version-1 head searched it)."""
    steps = range(11)
    out = []
    if len(parts) == 2:
        for i in steps:
            out.append({parts[0]: round(i / 10, 1), parts[1]: round(1 - i / 10, 1)})
    else:
        for i in steps:
            for j in range(11 - i):
                out.append({parts[0]: round(i / 10, 1), parts[1]: round((10 - i - j) / 10, 1), parts[2]: round(j / 10, 1)})
    return out


def mixture_name(mix: dict[str, float]) -> str:
    """``"knn=0.3+trees=0.7"``: the non-zero parts of a mixture."""
    return "+".join(f"{k}={v:g}" for k, v in mix.items() if v > 0) or "none"


def mix(val: dict[str, np.ndarray], weights: dict[str, float], rows=slice(None)) -> np.ndarray:
    """The weighted sum of the parts' probabilities (on ``rows``)."""
    return np.asarray(sum(w * val[n][rows] for n, w in weights.items() if w > 0))


def row_losses(p: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per-row log-loss (probabilities clipped at 1e-12)."""
    return -np.log(np.clip(p[np.arange(len(codes)), codes], 1e-12, 1.0))


def _mcc(codes: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(codes, pred))


def best_mixtures(val: dict[str, np.ndarray], codes: np.ndarray, parts: tuple[str, ...], rows=slice(None)
                  ) -> tuple[dict[str, float], dict[bool, tuple[float, dict[str, float]]]]:
    """Validation log-loss of every mixture over ``parts`` (scored on ``rows``) and the best
    mixture with (``True``) and without (``False``) a tree part."""
    scores: dict[str, float] = {}
    best: dict[bool, tuple[float, dict[str, float]]] = {}
    c = codes[rows]
    for m in mixtures(parts):
        loss = _log_loss(mix(val, m, rows), c)
        scores[mixture_name(m)] = loss
        key = m.get("trees", 0) > 0
        if key not in best or loss < best[key][0] - 1e-12:
            best[key] = (loss, m)
    return scores, best


def keep_trees(val: dict[str, np.ndarray], codes: np.ndarray, seed: int) -> dict:
    """The do-no-harm test ``auto`` applies before it keeps a tree part.

    Choosing the best of 66 tree mixtures and testing it on the rows it was chosen on favours
    trees (the winner's curse), and a lower log-loss need not mean better calls: with few rows
    per class, sharper probabilities for the majority class lower log-loss while minority
    calls get worse. So the comparison is cross-fitted: the validation rows are split in two
    stratified, seeded halves; on each half the best mixture with trees and the best without
    are chosen, and both are scored on the *other* half. Every validation row thus gets a
    prediction from mixtures chosen without it. Trees are kept only if

    * the paired per-row log-loss gain has z > ``TREE_Z`` (2 standard errors), and
    * the cross-fitted MCC with trees is at least the MCC without them (+ ``TREE_MCC_MARGIN``).

    Otherwise the head stays kNN + linear (today's default). Returns the test's numbers and
    ``keep`` (bool).
    """
    a, b = _stratified_split(codes, 0.5, seed + 2)
    n = len(codes)
    if min(len(a), len(b)) < 2:  # too few validation rows to test: keep the default head
        return {"rule": "too few validation rows for the cross-fitted test", "keep": False}
    d = np.zeros(n)
    pred = {True: np.zeros(n, dtype=np.int64), False: np.zeros(n, dtype=np.int64)}
    for choose, score in ((a, b), (b, a)):
        _, best = best_mixtures(val, codes, PARTS, choose)
        p = {k: mix(val, best[k][1], score) for k in (True, False)}
        d[score] = row_losses(p[False], codes[score]) - row_losses(p[True], codes[score])
        for k in (True, False):
            pred[k][score] = np.argmax(p[k], axis=1)
    z = float(d.mean() / max(d.std(ddof=1) / np.sqrt(n), 1e-12)) if n > 1 else 0.0
    mcc = {k: _mcc(codes, pred[k]) for k in (True, False)}
    keep = bool(z > TREE_Z and mcc[True] >= mcc[False] + TREE_MCC_MARGIN)
    return {"rule": "cross-fitted on 2 halves of the validation rows: keep trees if log-loss gain z > "
                    f"{TREE_Z:g} and MCC with trees >= MCC without + {TREE_MCC_MARGIN:g}",
            "gain": float(d.mean()), "z": z, "threshold": TREE_Z, "mcc_with_trees": mcc[True],
            "mcc_without_trees": mcc[False], "mcc_margin": TREE_MCC_MARGIN, "keep": keep}
