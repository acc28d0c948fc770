"""Classifier heads over embeddings, following the scikit-learn estimator API.

* :class:`KNNVoteHead`: similarity-weighted vote of the k nearest labeled neighbours (cosine,
  FAISS); ``exclude_self`` drops the query's own row when it is in the index.
* :class:`LinearHead`: standardised multinomial logistic regression. Scoring is numpy code
  equal to ``sklearn``'s ``predict_proba`` (tested to 1e-9), so a saved head needs no pickle.
* :class:`TreeHead`: gradient-boosted trees (XGBoost ``hist``), early-stopped, saved in
  XGBoost's UBJSON model format; SHAP feature contributions per prediction.
* :class:`FusedHead`: a mixture of the kNN vote, the linear head and the trees, its weights
  chosen by validation log-loss on a part of the training data (``head="linear"|"trees"|"auto"``
  limits the parts), then calibrated there (temperature or isotonic, chosen the same way).
  The fit uses a bounded sample of rows and the reference index (leave-one-out), so its cost
  does not grow quadratically with the store. It also stores the reference distribution of
  k-th-neighbour distances used for the out-of-distribution score.

Heads are saved with :func:`save_head` as ``head.json`` + ``head.npz`` (+ ``trees.ubj``), no
pickle, and verified by sha256 in :func:`load_head`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from genoray.artifacts import (
    ChecksumError,
    atomic_write_bytes,
    read_json,
    read_npz,
    sha256_file,
    sha256_json,
    write_json,
    write_npz,
)
from genoray.config import HeadConfig, to_dict

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # version-1 heads (kNN + linear) still load
TREES_FILE = "trees.ubj"
_ISO_FLOOR = 1e-4
_TREE_Z = 2.0  # auto keeps trees only if they lower validation log-loss by > 2 standard errors
_TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.25), np.log(4.0), 33))
_C_GRID = (0.01, 0.1, 1.0)


def _encode(y, classes: np.ndarray) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([lookup[v] for v in y], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"label {e.args[0]!r} not among the classes seen in fit: {list(classes)}") from None


def _check_X(X, n_features: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but the head was fitted with {n_features}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinity")
    return X


def vote(sims: np.ndarray, nbr_codes: np.ndarray, n_classes: int, temperature: float, smoothing: float = 0.1) -> np.ndarray:
    """Class probabilities from neighbour similarities ``(n, k)`` and label codes ``(n, k)``
    (``-1`` = no neighbour): softmax(sim / T) weights summed per class, plus ``smoothing``
    spread evenly over classes, renormalised."""
    valid = nbr_codes >= 0
    s = np.where(valid, sims, -np.inf).astype(np.float64)
    top = np.max(s, axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    w = np.where(valid, np.exp((s - top) / temperature), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    p = np.zeros((sims.shape[0], n_classes))
    rows = np.broadcast_to(np.arange(sims.shape[0])[:, None], sims.shape)
    np.add.at(p, (rows[valid], nbr_codes[valid]), w[valid])
    p += smoothing / n_classes
    return p / p.sum(axis=1, keepdims=True)


def drop_own(sims: np.ndarray, pos: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``k`` neighbours that are not marked ``own`` (the query itself), from a
    search done with one extra neighbour; rows without a self-hit drop the extra one."""
    own = own.copy()
    own[~own.any(axis=1), -1] = True
    order = np.argsort(own, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(pos, order, 1)


def align_proba(classes_from, p: np.ndarray, classes_to) -> np.ndarray:
    """Columns of ``p`` (in ``classes_from`` order) re-indexed to ``classes_to`` (0 where absent)."""
    where = {c: i for i, c in enumerate(classes_to)}
    out = np.zeros((p.shape[0], len(where)))
    for j, c in enumerate(classes_from):
        out[:, where[c]] = p[:, j]
    return out


class KNNVoteHead(ClassifierMixin, BaseEstimator):
    """Similarity-weighted k-nearest-neighbour vote (cosine similarity).

    Args:
        k: neighbours per query.
        temperature: softmax temperature over similarities (smaller = closer neighbours dominate).
        smoothing: probability mass spread evenly over classes (keeps log-loss finite).
    """

    def __init__(self, k: int = 10, temperature: float = 0.05, smoothing: float = 0.1):
        self.k = k
        self.temperature = temperature
        self.smoothing = smoothing

    def fit(self, X, y) -> "KNNVoteHead":
        """Index ``X`` (L2-normalised) as the reference set with labels ``y``; returns ``self``."""
        from genoray.index import VectorIndex

        X = _check_X(X)
        y = np.asarray(y, dtype=object)
        self.classes_ = np.array(sorted(set(y)), dtype=object)
        self.n_features_in_ = X.shape[1]
        self.y_ = _encode(y, self.classes_)
        self.index_ = VectorIndex.from_vectors(X, np.arange(len(y)), y)
        return self

    def attach(self, index, classes) -> "KNNVoteHead":
        """Use an existing :class:`~genoray.index.VectorIndex` (its labels) as the reference set."""
        self.classes_ = np.asarray(classes, dtype=object)
        self.n_features_in_ = index.dim
        self.y_ = _encode(index.labels, self.classes_)
        self.index_ = index
        return self

    def kneighbors(self, X, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and index rows of the k nearest neighbours. With ``exclude_self``, X
        must be the fitted matrix in fitted order and each row's own entry is skipped."""
        check_is_fitted(self, "index_")
        X = _check_X(X, self.n_features_in_)
        if exclude_self:
            sims, pos = self.index_.search(X, self.k + 1)
            own = pos == np.arange(pos.shape[0])[:, None]
            return drop_own(sims, pos, own, min(self.k, self.index_.ntotal - 1))
        return self.index_.search(X, self.k)

    def proba_from_neighbours(self, sims: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Vote probabilities from neighbour similarities and index rows (``-1`` = none)."""
        codes = np.where(pos >= 0, self.y_[np.clip(pos, 0, None)], -1)
        return vote(sims, codes, len(self.classes_), self.temperature, self.smoothing)

    def predict_proba(self, X, exclude_self: bool = False) -> np.ndarray:
        """Vote probabilities of the k nearest reference rows of each row of ``X``."""
        return self.proba_from_neighbours(*self.kneighbors(X, exclude_self))

    def predict(self, X) -> np.ndarray:
        """Most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class LinearHead(ClassifierMixin, BaseEstimator):
    """Standardised (multinomial) logistic regression, scored in numpy.

    Args:
        C: inverse L2 regularisation strength.
        max_iter: solver iterations.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000):
        self.C = C
        self.max_iter = max_iter

    def fit(self, X, y) -> "LinearHead":
        """Standardise and fit the logistic regression; returns ``self``."""
        from sklearn.linear_model import LogisticRegression

        X = _check_X(X).astype(np.float64)
        y = np.asarray(y, dtype=object)
        self.classes_ = np.array(sorted(set(y)), dtype=object)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 classes to fit, got {list(self.classes_)}")
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        X -= self.mean_  # in place: X is already this method's own float64 copy
        X /= self.scale_
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter)
        lr.fit(X, _encode(y, self.classes_))
        self.coef_, self.intercept_ = lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits of the logistic regression."""
        check_is_fitted(self, "coef_")
        X = _check_X(X, self.n_features_in_).astype(np.float64)
        return ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of the logistic regression."""
        z = self.decision_function(X)
        if self.coef_.shape[0] == 1:  # binary: sklearn stores one row for classes_[1]
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _xgboost():
    try:
        import xgboost
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError("the tree head needs XGBoost: pip install 'genoray[cpu]' (xgboost-cpu), "
                          "or fit with head='linear'") from e
    return xgboost


def _log_loss(p: np.ndarray, codes: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(codes)), codes], 1e-12, 1.0))))


def calibrate(p: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling on probabilities: ``p ** (1/T)`` renormalised."""
    logp = np.log(np.clip(p, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def _fit_temperature(p: np.ndarray, codes: np.ndarray) -> float:
    cal = [_log_loss(calibrate(p, t), codes) for t in _TEMPERATURE_GRID]
    return float(_TEMPERATURE_GRID[int(np.argmin(cal))])


def _fit_isotonic(p: np.ndarray, codes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest isotonic maps (thresholds x -> y) per class; binary heads map class 1 only."""
    from sklearn.isotonic import IsotonicRegression

    cols = [1] if p.shape[1] == 2 else range(p.shape[1])
    maps = []
    for c in cols:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p[:, c], (codes == c).astype(float))
        maps.append((np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)))
    return maps


def apply_isotonic(p: np.ndarray, maps: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Apply :func:`_fit_isotonic` maps (piecewise-linear, clipped), floored at 1e-4 and renormalised."""
    if p.shape[1] == 2:
        p1 = np.interp(p[:, 1], *maps[0])
        q = np.stack([1.0 - p1, p1], axis=1)
    else:
        q = np.stack([np.interp(p[:, c], *maps[c]) for c in range(p.shape[1])], axis=1)
    q = np.clip(q, _ISO_FLOOR, None)
    return q / q.sum(axis=1, keepdims=True)


def _stratified_split(codes: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = np.zeros(len(codes), dtype=bool)
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        n_val = int(round(len(members) * fraction))
        if len(members) >= 2:
            val[rng.choice(members, size=min(max(n_val, 1), len(members) - 1), replace=False)] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def stratified_sample(codes: np.ndarray, n_max: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of at most ``n_max`` rows, each class kept in
    proportion (at least one row per class); all rows when there are no more than ``n_max``."""
    if len(codes) <= n_max:
        return np.arange(len(codes))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        n = max(1, int(round(len(members) * n_max / len(codes))))
        keep.append(rng.choice(members, size=min(n, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def _loo_neighbours(index, X: np.ndarray, ids: np.ndarray, k: int, batch: int = 8192,
                    exclude: set | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of rows ``X`` (whose ids are ``ids``) in ``index``, each row's own
    entry excluded, and with ``exclude`` also every row whose id is in that set (searched in
    batches with extra neighbours; missing neighbours get position -1)."""
    out_s, out_p = [], []
    k_eff = min(k, index.ntotal - 1)
    k_search = min(index.ntotal, k_eff + 1 if exclude is None else 3 * k_eff + 10)
    in_excluded = None if exclude is None else np.frompyfunc(exclude.__contains__, 1, 1)
    for a in range(0, len(X), batch):
        sims, pos = index.search(X[a : a + batch], k_search)
        found = index.ids[np.clip(pos, 0, None)]
        bad = (found == np.asarray(ids[a : a + batch], dtype=object)[:, None]) | (pos < 0)
        if in_excluded is None:
            s, p = drop_own(sims, pos, bad & (pos >= 0), k_eff)
        else:
            bad |= in_excluded(found).astype(bool)
            order = np.argsort(bad, axis=1, kind="stable")[:, :k_eff]
            s, p = np.take_along_axis(sims, order, 1), np.take_along_axis(pos, order, 1)
            p = np.where(np.take_along_axis(bad, order, 1), -1, p)
        out_s.append(s)
        out_p.append(p)
    return np.concatenate(out_s), np.concatenate(out_p)


class TreeHead(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees (XGBoost, ``hist``), early-stopped on a held-out part.

    XGBoost was chosen over LightGBM by measurement on the seven shared datasets (see
    ``bench/bench_heads.py`` and the README): equal accuracy, a safe portable model format
    (UBJSON, no pickle), SHAP contributions built in, CUDA and Ray Train support.

    Args:
        max_rounds: boosting rounds at most (early stopping usually ends sooner).
        learning_rate, max_depth, subsample, colsample_bytree, max_bin: XGBoost parameters.
        early_stopping_rounds: rounds without improvement of the held-out log-loss before stopping.
        stop_fraction: part of the fit rows held out for early stopping (when ``fit`` gets no
            ``eval_set``).
        n_jobs: threads (0 = all cores).
        batch_size: rows per prediction batch.
        seed: row/column subsampling seed.
    """

    def __init__(self, max_rounds: int = 500, learning_rate: float = 0.1, max_depth: int = 6, subsample: float = 0.8,
                 colsample_bytree: float = 0.5, max_bin: int = 64, early_stopping_rounds: int = 20,
                 stop_fraction: float = 0.15, n_jobs: int = 0, batch_size: int = 65536, seed: int = 0):
        self.max_rounds = max_rounds
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.stop_fraction = stop_fraction
        self.n_jobs = n_jobs
        self.batch_size = batch_size
        self.seed = seed

    def _params(self, n_classes: int) -> dict[str, Any]:
        p: dict[str, Any] = {"tree_method": "hist", "eta": self.learning_rate, "max_depth": self.max_depth,
                             "subsample": self.subsample, "colsample_bytree": self.colsample_bytree,
                             "max_bin": self.max_bin, "seed": self.seed, "verbosity": 0}
        if self.n_jobs:
            p["nthread"] = self.n_jobs
        if n_classes == 2:
            p.update(objective="binary:logistic", eval_metric="logloss")
        else:
            p.update(objective="multi:softprob", num_class=n_classes, eval_metric="mlogloss")
        return p

    def fit(self, X, y, rounds: int | None = None, classes=None) -> "TreeHead":
        """Fit with early stopping on a stratified ``stop_fraction`` of the rows, or, with
        ``rounds``, for exactly that many rounds on all rows (a refit after early stopping)."""
        xgb = _xgboost()

        X = _check_X(X)
        y = np.asarray(y, dtype=object)
        self.classes_ = np.array(sorted(set(y)) if classes is None else classes, dtype=object)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 classes to fit, got {list(self.classes_)}")
        self.n_features_in_ = X.shape[1]
        codes = _encode(y, self.classes_)
        params = self._params(len(self.classes_))
        if rounds is None:
            fit, stop = _stratified_split(codes, self.stop_fraction, self.seed)
            dfit = xgb.DMatrix(X[fit], label=codes[fit])
            dstop = xgb.DMatrix(X[stop], label=codes[stop])
            bst = xgb.train(params, dfit, num_boost_round=self.max_rounds, evals=[(dstop, "stop")],
                            early_stopping_rounds=self.early_stopping_rounds, verbose_eval=False)
            self.rounds_ = int(bst.best_iteration) + 1
            self.booster_ = bst[: self.rounds_]
        else:
            self.rounds_ = int(rounds)
            self.booster_ = xgb.train(params, xgb.DMatrix(X, label=codes), num_boost_round=self.rounds_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "booster_")
        X = _check_X(X, self.n_features_in_)
        out = []
        for a in range(0, len(X), self.batch_size):
            p = np.asarray(self.booster_.inplace_predict(X[a : a + self.batch_size]), dtype=np.float64)
            out.append(np.stack([1.0 - p, p], axis=1) if p.ndim == 1 else p)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)))

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def contributions(self, X, classes: np.ndarray, top: int = 5) -> list[list[dict[str, Any]]]:
        """Per row, the ``top`` features with the largest absolute SHAP value (XGBoost's
        ``pred_contribs``) toward ``classes`` (one class code per row), as
        ``{"feature": column, "contribution": log-odds}``."""
        xgb = _xgboost()

        X = _check_X(X, self.n_features_in_)
        out: list[list[dict[str, Any]]] = []
        for a in range(0, len(X), self.batch_size):
            c = np.asarray(self.booster_.predict(xgb.DMatrix(X[a : a + self.batch_size]), pred_contribs=True))
            cls = np.asarray(classes[a : a + self.batch_size])
            if c.ndim == 2:  # binary: contributions to the log-odds of class 1
                rows = np.where(cls[:, None] == 1, c, -c)[:, :-1]
            else:
                rows = c[np.arange(len(cls)), cls, :-1]
            order = np.argsort(-np.abs(rows), axis=1)[:, :top]
            out += [[{"feature": int(j), "contribution": round(float(r[j]), 6)} for j in o] for r, o in zip(rows, order)]
        return out

    def to_bytes(self) -> bytes:
        """The booster in XGBoost's UBJSON model format (no pickle)."""
        check_is_fitted(self, "booster_")
        return bytes(self.booster_.save_raw(raw_format="ubj"))

    @classmethod
    def from_bytes(cls, raw: bytes, classes, n_features: int, rounds: int, params: dict[str, Any]) -> "TreeHead":
        xgb = _xgboost()

        head = cls(**params)
        head.booster_ = xgb.Booster(params={"nthread": params.get("n_jobs") or 0} if params.get("n_jobs") else None)
        head.booster_.load_model(bytearray(raw))
        head.classes_ = np.asarray(classes, dtype=object)
        head.n_features_in_, head.rounds_ = int(n_features), int(rounds)
        return head


_PARTS = ("knn", "linear", "trees")
_HEAD_MODES = {"linear": ("knn", "linear"), "trees": ("knn", "trees"), "auto": _PARTS}


def _mixtures(parts: tuple[str, ...]) -> list[dict[str, float]]:
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


class FusedHead(ClassifierMixin, BaseEstimator):
    """kNN vote, linear head and gradient-boosted trees, mixed and calibrated on validation data.

    Args: see :class:`genoray.config.HeadConfig` (``k``, ``temperature``, ``C``,
    ``val_fraction``, ``seed``, ``head``, ``max_rows``); ``tree_threads`` (0 = all cores).

    Fit (all choices by log-loss on a seeded, stratified ``val_fraction`` of the rows):

    1. At most ``max_rows`` training rows are used (a seeded, class-stratified sample), so
       the fit's time and memory are bounded whatever the store size.
    2. Validation predictions of the kNN vote come from searches of the reference index that
       skip the validation rows themselves (so they vote with fit rows only), and the OOD
       reference from leave-one-out searches: never an all-against-all search.
    3. The linear part's ``C`` (``None``: chosen from 0.01, 0.1, 1) and the tree part (early
       stopping on a part of the fit rows) are fitted on the rest.
    4. The mixture is chosen among weights on a 0.1 grid over the parts ``head`` allows:
       ``linear`` = kNN + linear (the version-1 head), ``trees`` = kNN + trees, ``auto`` = all
       three (each part alone is a grid point). ``auto`` takes a mixture with trees only if
       it beats the best kNN + linear mixture by more than 2 standard errors of the paired
       per-row log-loss difference (small, noisy validation parts keep the simpler head).
    5. Calibration: temperature scaling or isotonic regression, whichever has the lower
       2-fold cross-fitted log-loss on the validation part; then fitted on all of it.
    6. The chosen parts are refitted on all sampled rows (trees for the early-stopped number
       of rounds).

    Fitted attributes: ``classes_``, ``mixture_`` (weight per part), ``weight_`` (of the kNN
    vote), ``C_``, ``calibration_`` (temperature, or ``None`` when isotonic),
    ``calibration_method_``, ``linear_``, ``trees_`` (or ``None``), ``knn_``,
    ``ood_reference_`` (sorted leave-one-out k-th-neighbour cosine distances of the sampled
    training rows), ``val_scores_`` (validation log-loss per mixture), ``selection_``.
    """

    def __init__(self, k: int = 10, temperature: float = 0.05, C: float | None = None, val_fraction: float = 0.2,
                 seed: int = 0, head: str = "linear", max_rows: int = 100_000, tree_threads: int = 0):
        self.k = k
        self.temperature = temperature
        self.C = C
        self.val_fraction = val_fraction
        self.seed = seed
        self.head = head
        self.max_rows = max_rows
        self.tree_threads = tree_threads

    @classmethod
    def from_config(cls, cfg: HeadConfig) -> "FusedHead":
        """A head with the settings of ``cfg``."""
        return cls(**to_dict(cfg))

    def fit(self, X, y, index=None, ids=None) -> "FusedHead":
        """Fit on embeddings ``X`` with labels ``y``.

        Args:
            index: the :class:`~genoray.index.VectorIndex` the kNN part votes over at
                prediction time (built from these rows, any order; ``X`` may be a sample of
                them). Default: an exact index over ``X``.
            ids: the index ids of the rows of ``X`` (required with ``index``).
        """
        from genoray.index import VectorIndex

        if self.head not in _HEAD_MODES:
            raise ValueError(f"head must be one of {sorted(_HEAD_MODES)}, got {self.head!r}")
        X = _check_X(X)
        y = np.asarray(y, dtype=object)
        self.classes_ = np.array(sorted(set(y)), dtype=object)
        codes = _encode(y, self.classes_)
        if index is None:
            ids = np.arange(len(y))
            index = VectorIndex.from_vectors(X, ids, y)
        elif ids is None or len(ids) != len(y):
            raise ValueError("fit(index=...) needs the index ids of the rows of X")
        ids = np.asarray(ids, dtype=object)
        rows = stratified_sample(codes, self.max_rows, self.seed)
        if len(rows) < len(y):
            X, y, codes, ids = X[rows], y[rows], codes[rows], ids[rows]
        tr, va = _stratified_split(codes, self.val_fraction, self.seed)
        self.knn_ = KNNVoteHead(k=self.k, temperature=self.temperature).attach(index, self.classes_)
        sims, _ = _loo_neighbours(index, X, ids, self.k)  # leave-one-out over the sampled rows
        self.ood_reference_ = np.sort(1.0 - sims[:, -1]).astype(np.float64)
        # the vote on the validation rows uses only reference rows outside the validation part
        sims, pos = _loo_neighbours(index, X[va], ids[va], self.k, exclude=set(ids[va].tolist()))
        val = {"knn": self.knn_.proba_from_neighbours(sims, pos)}
        parts = _HEAD_MODES[self.head]
        best = None
        for C in (_C_GRID if self.C is None else (self.C,)):
            lin = LinearHead(C=C).fit(X[tr], y[tr])
            p = align_proba(lin.classes_, lin.predict_proba(X[va]), self.classes_)
            loss = _log_loss(p, codes[va])
            if best is None or loss < best[0]:
                best = (loss, C, p)
        assert best is not None  # the grid is never empty (for mypy)
        _, self.C_, val["linear"] = best
        tree_rounds = None
        if "trees" in parts:
            trees = self._new_trees().fit(X[tr], y[tr], classes=self.classes_)
            val["trees"] = trees.predict_proba(X[va])
            tree_rounds = trees.rounds_
        scores = {}
        by_trees: dict[bool, tuple[float, dict[str, float]]] = {}  # with trees / without trees
        for mix in _mixtures(parts):
            loss = _log_loss(np.asarray(sum(w * val[n] for n, w in mix.items())), codes[va])
            scores[mixture_name(mix)] = loss
            key = mix.get("trees", 0) > 0
            if key not in by_trees or loss < by_trees[key][0] - 1e-12:
                by_trees[key] = (loss, mix)
        best_loss, best_mix = min(by_trees.values(), key=lambda b: b[0])
        self.tree_test_: dict[str, float] | None = None
        if self.head == "auto" and best_mix.get("trees", 0) > 0:
            best_loss, best_mix = self._keep_trees(by_trees[True], by_trees[False], val, codes[va])
        self.mixture_ = {n: float(best_mix.get(n, 0.0)) for n in _PARTS}
        self.weight_ = self.mixture_["knn"]
        self.val_scores_ = scores
        mixed = np.asarray(sum(w * val[n] for n, w in self.mixture_.items() if w > 0))
        self._choose_calibration(mixed, codes[va])
        # refit the parts on all sampled rows
        self.linear_ = LinearHead(C=self.C_).fit(X, y)
        self.trees_ = None
        if self.mixture_["trees"] > 0:
            self.trees_ = self._new_trees().fit(X, y, rounds=tree_rounds, classes=self.classes_)
        self.n_features_in_ = X.shape[1]
        self.selection_ = {"metric": "log_loss", "candidates": self.head, "seed": self.seed,
                           "fit_rows": int(len(tr)), "val_rows": int(len(va)), "rows_used": int(len(y)),
                           "chosen": mixture_name(self.mixture_), "val_log_loss": float(best_loss),
                           "part_val_log_loss": {n: _log_loss(p, codes[va]) for n, p in val.items()},
                           "tree_rounds": tree_rounds, "tree_test": self.tree_test_}
        return self

    @staticmethod
    def _row_losses(p: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return -np.log(np.clip(p[np.arange(len(codes)), codes], 1e-12, 1.0))

    def _keep_trees(self, with_trees, without, val, codes) -> tuple[float, dict[str, float]]:
        """``auto`` adds the tree part only when it lowers the validation log-loss of the best
        kNN + linear mixture significantly: a paired z-test over validation rows (z > 2)."""
        def rows(mix):
            return self._row_losses(sum(w * val[n] for n, w in mix.items()), codes)

        d = rows(without[1]) - rows(with_trees[1])
        z = float(d.mean() / max(d.std(ddof=1) / np.sqrt(len(d)), 1e-12)) if len(d) > 1 else 0.0
        self.tree_test_ = {"gain": float(d.mean()), "z": z, "threshold": _TREE_Z}
        return with_trees if z > _TREE_Z else without

    def _new_trees(self) -> TreeHead:
        return TreeHead(n_jobs=self.tree_threads, seed=self.seed)

    def _choose_calibration(self, p: np.ndarray, codes: np.ndarray) -> None:
        """Temperature vs isotonic by 2-fold cross-fitted log-loss (seeded halves)."""
        a, b = _stratified_split(codes, 0.5, self.seed + 1)
        cv = {"temperature": 0.0, "isotonic": 0.0}
        if min(len(a), len(b)) < 10:  # too few validation rows to compare: temperature (one parameter)
            cv["isotonic"] = float("inf")
            a = b = np.zeros(0, dtype=np.int64)
        for fit, test in ((a, b), (b, a)) if len(a) else ():
            cv["temperature"] += _log_loss(calibrate(p[test], _fit_temperature(p[fit], codes[fit])), codes[test]) / 2
            cv["isotonic"] += _log_loss(apply_isotonic(p[test], _fit_isotonic(p[fit], codes[fit])), codes[test]) / 2
        self.calibration_scores_ = {m: (v if np.isfinite(v) else None) for m, v in cv.items()}
        self.calibration_method_ = "isotonic" if cv["isotonic"] < cv["temperature"] else "temperature"
        self.calibration_ = self.isotonic_ = None
        if self.calibration_method_ == "temperature":
            self.calibration_ = _fit_temperature(p, codes)
        else:
            self.isotonic_ = _fit_isotonic(p, codes)

    def attach_index(self, index) -> "FusedHead":
        """Use a saved :class:`~genoray.index.VectorIndex` as the kNN reference set."""
        self.knn_ = KNNVoteHead(k=self.k, temperature=self.temperature).attach(index, self.classes_)
        return self

    def _calibrate(self, p: np.ndarray) -> np.ndarray:
        if self.calibration_method_ == "isotonic":
            assert self.isotonic_ is not None
            return apply_isotonic(p, self.isotonic_)
        assert self.calibration_ is not None
        return calibrate(p, self.calibration_)

    def part_probas(self, x: np.ndarray, sims: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        """Uncalibrated probabilities of each fitted part: ``knn_vote`` (from the neighbours
        ``sims``/``pos`` of an index search, own ids already excluded), ``linear`` and, when
        the head has one, ``trees``."""
        check_is_fitted(self, "mixture_")
        x = _check_X(x, self.n_features_in_)
        out = {"knn_vote": self._knn().proba_from_neighbours(sims[:, : self.k], pos[:, : self.k]),
               "linear": self.linear_.predict_proba(x)}
        if self.trees_ is not None:
            out["trees"] = self.trees_.predict_proba(x)
        return out

    def proba_from_neighbours(self, sims: np.ndarray, pos: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for embeddings ``x`` whose nearest neighbours in the
        attached index are ``sims``/``pos`` (first ``k`` columns used; own ids excluded)."""
        check_is_fitted(self, "mixture_")
        x = _check_X(x, self.n_features_in_)
        p = np.zeros((len(x), len(self.classes_)))
        if self.mixture_["knn"] > 0:
            p += self.mixture_["knn"] * self._knn().proba_from_neighbours(sims[:, : self.k], pos[:, : self.k])
        if self.mixture_["linear"] > 0:
            p += self.mixture_["linear"] * self.linear_.predict_proba(x)
        if self.mixture_["trees"] > 0:
            assert self.trees_ is not None
            p += self.mixture_["trees"] * self.trees_.predict_proba(x)
        return self._calibrate(p)

    def contributions(self, x: np.ndarray, top: int = 5) -> list[list[dict[str, Any]]]:
        """Per row, the ``top`` features whose SHAP values (from the tree part) most moved its
        tree-predicted class; raises if the head has no tree part."""
        trees = getattr(self, "trees_", None)
        if trees is None:
            raise ValueError(f"feature contributions need a tree part; this head uses {mixture_name(self.mixture_)}")
        x = _check_X(x, self.n_features_in_)
        return trees.contributions(x, np.argmax(trees.predict_proba(x), axis=1), top)

    def combine(self, p_knn: np.ndarray, p_lin: np.ndarray) -> np.ndarray:
        """Calibrated mixture of kNN and linear probabilities (heads without a tree part)."""
        if self.mixture_["trees"] > 0:
            raise ValueError("this head has a tree part: use proba_from_neighbours(sims, pos, x)")
        return self._calibrate(self.mixture_["knn"] * p_knn + self.mixture_["linear"] * p_lin)

    def ood_score(self, kth_similarity: np.ndarray) -> np.ndarray:
        """Fraction of (sampled) training rows whose k-th neighbour is closer than this query's
        (0 = typical, near 1 = farther than almost all reference data)."""
        d = 1.0 - np.asarray(kth_similarity, dtype=np.float64)
        return np.searchsorted(self.ood_reference_, d, side="left") / max(len(self.ood_reference_), 1)

    def _knn(self) -> KNNVoteHead:
        if not hasattr(self, "knn_"):
            raise ValueError("this head was loaded without its index: call attach_index(index) first")
        return self.knn_

    def predict_proba(self, X, exclude_self: bool = False) -> np.ndarray:
        """Calibrated fused probabilities of each row."""
        check_is_fitted(self, "mixture_")
        X = _check_X(X, self.n_features_in_)
        sims, pos = self._knn().kneighbors(X, exclude_self)
        return self.proba_from_neighbours(sims, pos, X)

    def predict(self, X) -> np.ndarray:
        """Most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def save_head(head: FusedHead, out_dir: str | Path, encoder_fingerprint: str | None = None) -> None:
    """Write ``head.json`` + ``head.npz`` (+ ``trees.ubj``, XGBoost's UBJSON model, when the
    head has a tree part); the JSON records every file's sha256 and its own payload hash."""
    check_is_fitted(head, "mixture_")
    out = Path(out_dir)
    if (out / "head.json").exists():
        raise FileExistsError(f"{out}: a head already exists here; write a new directory")
    lin = head.linear_
    iso = {}
    for i, (xt, yt) in enumerate(head.isotonic_ or []):
        iso[f"isotonic_x_{i}"], iso[f"isotonic_y_{i}"] = xt, yt
    write_npz(out / "head.npz", coef=lin.coef_, intercept=lin.intercept_, mean=lin.mean_, scale=lin.scale_,
              ood_reference=head.ood_reference_, **iso)
    trees = None
    if head.trees_ is not None:
        import xgboost

        atomic_write_bytes(out / TREES_FILE, head.trees_.to_bytes())
        trees = {"library": "xgboost", "version": xgboost.__version__, "file": TREES_FILE,
                 "sha256": sha256_file(out / TREES_FILE), "rounds": head.trees_.rounds_,
                 "params": head.trees_.get_params()}
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": "fused",
        "params": head.get_params(),
        "classes": [str(c) for c in head.classes_],
        "linear_classes": [str(c) for c in lin.classes_],
        "n_features": int(head.n_features_in_),
        "weight": head.weight_,
        "mixture": head.mixture_,
        "C": head.C_,
        "calibration": head.calibration_,
        "calibration_method": head.calibration_method_,
        "calibration_scores": head.calibration_scores_,
        "isotonic_maps": len(head.isotonic_ or []),
        "val_scores": head.val_scores_,
        "selection": head.selection_,
        "trees": trees,
        "encoder_fingerprint": encoder_fingerprint,
        "npz_sha256": sha256_file(out / "head.npz"),
    }
    write_json(out / "head.json", {"payload": payload, "sha256": sha256_json(payload)})


def load_head(path: str | Path, encoder_fingerprint: str | None = None) -> FusedHead:
    """Load and verify a saved head (sha256 of JSON payload, npz and tree model; encoder
    fingerprint). Version-1 heads (kNN + linear, temperature) load as such."""
    path = Path(path)
    doc = read_json(path / "head.json")
    payload = doc.get("payload", {})
    if sha256_json(payload) != doc.get("sha256"):
        raise ChecksumError(f"{path / 'head.json'}: payload sha256 does not match (edited or corrupt)")
    version = payload.get("format_version")
    if version not in (1, FORMAT_VERSION) or payload.get("kind") != "fused":
        raise ValueError(f"{path / 'head.json'}: unsupported head {payload.get('kind')} v{version} "
                         f"(this genoray reads fused heads of format 1 and {FORMAT_VERSION})")
    if sha256_file(path / "head.npz") != payload["npz_sha256"]:
        raise ChecksumError(f"{path / 'head.npz'}: sha256 does not match head.json")
    trees_doc = payload.get("trees")
    raw = None
    if trees_doc:
        raw = (path / trees_doc["file"]).read_bytes()
        if hashlib.sha256(raw).hexdigest() != trees_doc["sha256"]:
            raise ChecksumError(f"{path / trees_doc['file']}: sha256 does not match head.json")
    if encoder_fingerprint and payload["encoder_fingerprint"] and encoder_fingerprint != payload["encoder_fingerprint"]:
        raise ValueError(
            f"{path}: head was trained on encoder {payload['encoder_fingerprint']}, not {encoder_fingerprint}"
        )
    arrays = read_npz(path / "head.npz")
    head = FusedHead(**payload["params"])
    head.classes_ = np.array(payload["classes"], dtype=object)
    head.n_features_in_ = payload["n_features"]
    head.weight_, head.C_ = payload["weight"], payload["C"]
    head.val_scores_ = payload["val_scores"]
    head.ood_reference_ = arrays["ood_reference"]
    if version == 1:
        head.mixture_ = {"knn": head.weight_, "linear": 1.0 - head.weight_, "trees": 0.0}
        head.calibration_, head.calibration_method_, head.isotonic_ = payload["calibration"], "temperature", None
        head.calibration_scores_, head.selection_ = {}, {"candidates": "linear", "format_version": 1}
    else:
        head.mixture_ = payload["mixture"]
        head.calibration_, head.calibration_method_ = payload["calibration"], payload["calibration_method"]
        head.calibration_scores_, head.selection_ = payload["calibration_scores"], payload["selection"]
        head.isotonic_ = [(arrays[f"isotonic_x_{i}"], arrays[f"isotonic_y_{i}"]) for i in range(payload["isotonic_maps"])] or None
    lin = LinearHead(C=head.C_)
    lin.classes_ = np.array(payload["linear_classes"], dtype=object)
    lin.n_features_in_ = payload["n_features"]
    lin.coef_, lin.intercept_, lin.mean_, lin.scale_ = arrays["coef"], arrays["intercept"], arrays["mean"], arrays["scale"]
    if lin.coef_.shape[1] != head.n_features_in_:
        raise ValueError(f"{path}: coef has {lin.coef_.shape[1]} features, head.json says {head.n_features_in_}")
    head.linear_ = lin
    head.trees_ = None
    if raw is not None:
        head.trees_ = TreeHead.from_bytes(raw, head.classes_, head.n_features_in_, trees_doc["rounds"], trees_doc["params"])
    head.encoder_fingerprint_ = payload["encoder_fingerprint"]
    return head
