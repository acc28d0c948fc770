"""Classifier heads over embeddings, following the scikit-learn estimator API.

* :class:`KNNVoteHead`: similarity-weighted vote of the k nearest labeled neighbours (cosine,
  FAISS); ``exclude_self`` drops the query's own row when it is in the index.
* :class:`LinearHead`: standardised multinomial logistic regression. Scoring is numpy code
  equal to ``sklearn``'s ``predict_proba`` (tested to 1e-9), so a saved head needs no pickle.
* :class:`FusedHead`: ``w * p_knn + (1 - w) * p_linear`` with ``w`` chosen on a validation
  split of the training data, then temperature-calibrated on that split (``p ** (1/T)``,
  renormalised). It also stores the reference distribution of k-th-neighbour distances used
  for the out-of-distribution score.

Heads are saved with :func:`save_head` as ``head.json`` + ``head.npz`` (no pickle) and verified
by sha256 in :func:`load_head`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from genoray.artifacts import ChecksumError, read_json, read_npz, sha256_file, sha256_json, write_json, write_npz
from genoray.config import HeadConfig, to_dict

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_WEIGHT_GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
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
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter)
        lr.fit((X - self.mean_) / self.scale_, _encode(y, self.classes_))
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


def _log_loss(p: np.ndarray, codes: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(codes)), codes], 1e-12, 1.0))))


def calibrate(p: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling on probabilities: ``p ** (1/T)`` renormalised."""
    logp = np.log(np.clip(p, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def _stratified_split(codes: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = np.zeros(len(codes), dtype=bool)
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        n_val = int(round(len(members) * fraction))
        if len(members) >= 2:
            val[rng.choice(members, size=min(max(n_val, 1), len(members) - 1), replace=False)] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


class FusedHead(ClassifierMixin, BaseEstimator):
    """kNN vote fused with a linear head; fusion weight and calibration chosen on validation data.

    Args: see :class:`genoray.config.HeadConfig` (``k``, ``temperature``, ``C``,
    ``val_fraction``, ``seed``).

    ``C=None`` chooses the regularisation of the linear part from (0.01, 0.1, 1) on the same
    validation split, so wide feature sets (e.g. position-aware blocks on unaligned data)
    are shrunk instead of overfitting.

    Fitted attributes: ``classes_``, ``weight_`` (of the kNN vote), ``calibration_`` (temperature),
    ``C_`` (regularisation used),
    ``linear_``, ``knn_``, ``ood_reference_`` (sorted k-th-neighbour cosine distances of the
    training rows, leave-one-out), ``val_scores_`` (validation log-loss per fusion weight).
    """

    def __init__(self, k: int = 10, temperature: float = 0.05, C: float | None = None, val_fraction: float = 0.2,
                 seed: int = 0):
        self.k = k
        self.temperature = temperature
        self.C = C
        self.val_fraction = val_fraction
        self.seed = seed

    @classmethod
    def from_config(cls, cfg: HeadConfig) -> "FusedHead":
        """A head with the settings of ``cfg``."""
        return cls(**to_dict(cfg))

    def fit(self, X, y) -> "FusedHead":
        """Fit both parts, choose the mixing weight and ``C`` on a validation part, calibrate; returns ``self``."""
        X = _check_X(X)
        y = np.asarray(y, dtype=object)
        self.classes_ = np.array(sorted(set(y)), dtype=object)
        codes = _encode(y, self.classes_)
        tr, va = _stratified_split(codes, self.val_fraction, self.seed)
        grid = _C_GRID if self.C is None else (self.C,)
        best = None
        for C in grid:
            lin = LinearHead(C=C).fit(X[tr], y[tr])
            p = align_proba(lin.classes_, lin.predict_proba(X[va]), self.classes_)
            loss = _log_loss(p, codes[va])
            if best is None or loss < best[0]:
                best = (loss, C, p)
        assert best is not None  # the grid is never empty (for mypy)
        _, self.C_, p_lin = best
        knn = KNNVoteHead(k=self.k, temperature=self.temperature).fit(X[tr], y[tr])
        p_knn = align_proba(knn.classes_, knn.predict_proba(X[va]), self.classes_)
        scores = [_log_loss(w * p_knn + (1 - w) * p_lin, codes[va]) for w in _WEIGHT_GRID]
        self.val_scores_ = dict(zip(map(float, _WEIGHT_GRID), scores))
        self.weight_ = float(_WEIGHT_GRID[int(np.argmin(scores))])
        fused = self.weight_ * p_knn + (1 - self.weight_) * p_lin
        cal = [_log_loss(calibrate(fused, t), codes[va]) for t in _TEMPERATURE_GRID]
        self.calibration_ = float(_TEMPERATURE_GRID[int(np.argmin(cal))])
        # refit both parts on all training rows
        self.linear_ = LinearHead(C=self.C_).fit(X, y)
        self.knn_ = KNNVoteHead(k=self.k, temperature=self.temperature).fit(X, y)
        self.n_features_in_ = X.shape[1]
        sims, _ = self.knn_.kneighbors(X, exclude_self=True)
        self.ood_reference_ = np.sort(1.0 - sims[:, -1]).astype(np.float64)
        return self

    def attach_index(self, index) -> "FusedHead":
        """Use a saved :class:`~genoray.index.VectorIndex` as the kNN reference set."""
        self.knn_ = KNNVoteHead(k=self.k, temperature=self.temperature).attach(index, self.classes_)
        return self

    def combine(self, p_knn: np.ndarray, p_lin: np.ndarray) -> np.ndarray:
        """Mix vote and linear probabilities with the fitted weight, then calibrate."""
        return calibrate(self.weight_ * p_knn + (1 - self.weight_) * p_lin, self.calibration_)

    def ood_score(self, kth_similarity: np.ndarray) -> np.ndarray:
        """Fraction of training rows whose k-th neighbour is closer than this query's
        (0 = typical, near 1 = farther than almost all reference data)."""
        d = 1.0 - np.asarray(kth_similarity, dtype=np.float64)
        return np.searchsorted(self.ood_reference_, d, side="left") / max(len(self.ood_reference_), 1)

    def predict_proba(self, X, exclude_self: bool = False) -> np.ndarray:
        """Calibrated fused probabilities of each row."""
        check_is_fitted(self, "weight_")
        if not hasattr(self, "knn_"):
            raise ValueError("this head was loaded without its index: call attach_index(index) first")
        X = _check_X(X, self.n_features_in_)
        return self.combine(self.knn_.predict_proba(X, exclude_self), self.linear_.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """Most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def save_head(head: FusedHead, out_dir: str | Path, encoder_fingerprint: str | None = None) -> None:
    """Write ``head.json`` + ``head.npz``; the JSON records the npz sha256 and its own payload hash."""
    check_is_fitted(head, "weight_")
    out = Path(out_dir)
    if (out / "head.json").exists():
        raise FileExistsError(f"{out}: a head already exists here; write a new directory")
    lin = head.linear_
    write_npz(out / "head.npz", coef=lin.coef_, intercept=lin.intercept_, mean=lin.mean_, scale=lin.scale_,
              ood_reference=head.ood_reference_)
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": "fused",
        "params": head.get_params(),
        "classes": [str(c) for c in head.classes_],
        "linear_classes": [str(c) for c in lin.classes_],
        "n_features": int(head.n_features_in_),
        "weight": head.weight_,
        "C": head.C_,
        "calibration": head.calibration_,
        "val_scores": head.val_scores_,
        "encoder_fingerprint": encoder_fingerprint,
        "npz_sha256": sha256_file(out / "head.npz"),
    }
    write_json(out / "head.json", {"payload": payload, "sha256": sha256_json(payload)})


def load_head(path: str | Path, encoder_fingerprint: str | None = None) -> FusedHead:
    """Load and verify a saved head (sha256 of JSON payload and npz; encoder fingerprint)."""
    path = Path(path)
    doc = read_json(path / "head.json")
    payload = doc.get("payload", {})
    if sha256_json(payload) != doc.get("sha256"):
        raise ChecksumError(f"{path / 'head.json'}: payload sha256 does not match (edited or corrupt)")
    if payload.get("format_version") != FORMAT_VERSION or payload.get("kind") != "fused":
        raise ValueError(f"{path / 'head.json'}: unsupported head {payload.get('kind')} v{payload.get('format_version')}")
    if sha256_file(path / "head.npz") != payload["npz_sha256"]:
        raise ChecksumError(f"{path / 'head.npz'}: sha256 does not match head.json")
    if encoder_fingerprint and payload["encoder_fingerprint"] and encoder_fingerprint != payload["encoder_fingerprint"]:
        raise ValueError(
            f"{path}: head was trained on encoder {payload['encoder_fingerprint']}, not {encoder_fingerprint}"
        )
    arrays = read_npz(path / "head.npz")
    head = FusedHead(**payload["params"])
    head.classes_ = np.array(payload["classes"], dtype=object)
    head.n_features_in_ = payload["n_features"]
    head.weight_, head.calibration_, head.C_ = payload["weight"], payload["calibration"], payload["C"]
    head.val_scores_ = payload["val_scores"]
    head.ood_reference_ = arrays["ood_reference"]
    lin = LinearHead(C=head.C_)
    lin.classes_ = np.array(payload["linear_classes"], dtype=object)
    lin.n_features_in_ = payload["n_features"]
    lin.coef_, lin.intercept_, lin.mean_, lin.scale_ = arrays["coef"], arrays["intercept"], arrays["mean"], arrays["scale"]
    if lin.coef_.shape[1] != head.n_features_in_:
        raise ValueError(f"{path}: coef has {lin.coef_.shape[1]} features, head.json says {head.n_features_in_}")
    head.linear_ = lin
    head.encoder_fingerprint_ = payload["encoder_fingerprint"]
    return head
