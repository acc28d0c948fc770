"""The parts a fused head mixes: :class:`KNNVoteHead`, :class:`LinearHead`, :class:`TreeHead`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from genoray.heads.common import _check_X, _encode, _stratified_split, drop_own, vote
from genoray.index import VectorIndex
from genoray.index.columns import ArrowColumn

log = logging.getLogger(__name__)


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

        X = _check_X(X)
        y = np.asarray(y, dtype=object)
        self.classes_ = np.array(sorted(set(y)), dtype=object)
        self.n_features_in_ = X.shape[1]
        self.y_: np.ndarray | None = _encode(y, self.classes_)
        self.index_ = VectorIndex.from_vectors(X, np.arange(len(y)), y)
        return self

    def attach(self, index, classes) -> "KNNVoteHead":
        """Use an existing :class:`~genoray.index.VectorIndex` (its labels) as the reference set.

        An index with an Arrow label column (a loaded, possibly memory-mapped index) keeps no
        per-row codes: the neighbours' labels are looked up per search (:meth:`codes_at`), so
        attaching costs no private memory that grows with the index. An in-memory index's
        labels are encoded once (``y_``)."""
        self.classes_ = np.asarray(classes, dtype=object)
        self.n_features_in_ = index.dim
        if isinstance(index.labels, ArrowColumn):  # checked in one streamed pass (pc.unique), nothing kept
            if new := sorted(set(map(str, pc.unique(index.labels.array).drop_null().to_pylist())) - set(map(str, classes))):
                raise ValueError(f"label {new[0]!r} not among the classes seen in fit: {list(self.classes_)}")
            self.y_ = None
        else:
            self.y_ = _encode(index.labels, self.classes_)
        self.index_ = index
        return self

    def codes_at(self, pos: np.ndarray) -> np.ndarray:
        """Class codes (positions in ``classes_``) of the reference rows ``pos`` (``-1`` = none, and
        gives ``-1``); a label outside ``classes_`` is refused."""
        pos = np.asarray(pos, dtype=np.int64)
        valid = pos >= 0
        if self.y_ is not None:
            return np.where(valid, self.y_[np.clip(pos, 0, None)], -1)
        labels = self.index_.labels.take(np.clip(pos, 0, None))
        value_set = pa.array([str(c) for c in self.classes_], pa.string())
        codes = pc.index_in(labels, value_set=value_set).fill_null(-1).to_numpy(zero_copy_only=False)
        codes = codes.astype(np.int64).reshape(pos.shape)
        if (bad := valid & (codes < 0)).any():
            label = labels[int(np.flatnonzero(bad.ravel())[0])].as_py()
            raise ValueError(f"label {label!r} of the index is not among the classes seen in fit: "
                             f"{list(self.classes_)} (refit the head on this index)")
        return np.where(valid, codes, -1)

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
        codes = self.codes_at(pos)
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


def _predict_single_threaded(booster) -> None:
    """Predict on one thread: with XGBoost's default (all cores) a 64-row batch of a small
    test model took 61 ms instead of 0.26 ms on a loaded 2-core machine (OpenMP threads
    waiting for each other); query batches are small, so one thread is the better default."""
    booster.set_param({"nthread": 1})


class TreeHead(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees (XGBoost, ``hist``), early-stopped on a held-out part.

    XGBoost was chosen over LightGBM by measurement on the seven shared datasets (see
    ``bench/bench_heads.py`` and docs/benchmarks.md): equal accuracy, a safe portable model format
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
        _predict_single_threaded(self.booster_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of each row (in batches of ``batch_size`` rows)."""
        check_is_fitted(self, "booster_")
        X = _check_X(X, self.n_features_in_)
        out = []
        for a in range(0, len(X), self.batch_size):
            p = np.asarray(self.booster_.inplace_predict(X[a : a + self.batch_size]), dtype=np.float64)
            out.append(np.stack([1.0 - p, p], axis=1) if p.ndim == 1 else p)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)))

    def predict(self, X) -> np.ndarray:
        """Most probable class of each row."""
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
        """A fitted head from :meth:`to_bytes` output (XGBoost's UBJSON model) and its fit facts."""
        xgb = _xgboost()

        head = cls(**params)
        head.booster_ = xgb.Booster(params={"nthread": params.get("n_jobs") or 0} if params.get("n_jobs") else None)
        head.booster_.load_model(bytearray(raw))
        _predict_single_threaded(head.booster_)
        head.classes_ = np.asarray(classes, dtype=object)
        head.n_features_in_, head.rounds_ = int(n_features), int(rounds)
        return head
