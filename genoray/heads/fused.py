"""The fused head: its parts mixed by weights chosen on validation data, then calibrated
(saved and loaded without pickle by :mod:`genoray.heads.persist`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from genoray.config import HeadConfig, to_dict
from genoray.heads import length_calibration
from genoray.heads.common import (
    _C_GRID,
    _check_X,
    _encode,
    _fit_isotonic,
    _fit_temperature,
    _log_loss,
    _loo_neighbours,
    _stratified_split,
    align_proba,
    apply_isotonic,
    bounded_search,
    calibrate,
    stratified_sample,
)
from genoray.heads.parts import KNNVoteHead, LinearHead, TreeHead
from genoray.heads.select import HEAD_MODES, PARTS, best_mixtures, keep_trees, mix, mixture_name
from genoray.index import VectorIndex

log = logging.getLogger(__name__)


@dataclass
class _Stage:
    """What every head mode's fit shares: the sampled rows, the validation split, each part's
    validation probabilities, the chosen ``C`` and tree rounds, refits (made once, on demand)
    and the seconds each step took."""

    X: np.ndarray
    y: np.ndarray
    codes: np.ndarray
    tr: np.ndarray
    va: np.ndarray
    classes: np.ndarray
    index: Any
    ood_reference: np.ndarray
    val: dict[str, np.ndarray]
    C: float
    tree_rounds: int | None
    seconds: dict[str, float] = field(default_factory=dict)
    refits: dict[str, Any] = field(default_factory=dict)
    length: dict[str, Any] = field(default_factory=dict)  # what a length calibration needs (ids, rows, parts)


class FusedHead(ClassifierMixin, BaseEstimator):
    """kNN vote, linear head and gradient-boosted trees, mixed and calibrated on validation data.

    Args: see :class:`genoray.config.HeadConfig` (``k``, ``temperature``, ``C``,
    ``val_fraction``, ``seed``, ``head``, ``max_rows``, ``ood_reference_rows``, ``fit_scan_rows``; the defaults are
    its defaults); ``tree_threads`` (0 = all cores).

    Fit (all choices by log-loss on a seeded, stratified ``val_fraction`` of the rows):

    1. At most ``max_rows`` training rows are used (a seeded, class-stratified sample), so
       the fit's time and memory are bounded whatever the store size.
    2. Validation predictions of the kNN vote come from searches of the reference index that
       skip the validation rows themselves (so they vote with fit rows only), and the OOD
       reference from leave-one-out searches of at most ``ood_reference_rows`` (10,000)
       sampled rows: never an all-against-all search. Each of these searches of an IVF index
       scans at most about ``fit_scan_rows`` vectors (``nprobe`` lowered for the fit only,
       :func:`genoray.heads.common.bounded_search`; recorded as ``selection_["fit_nprobe"]``).
    3. The linear part's ``C`` (``None``: chosen from 0.01, 0.1, 1) and the tree part (early
       stopping on a part of the fit rows) are fitted on the rest.
    4. The mixture is chosen among weights on a 0.1 grid over the parts ``head`` allows:
       ``linear`` = kNN + linear (the version-1 head), ``trees`` = kNN + trees, ``auto`` = all
       three (each part alone is a grid point). ``auto`` keeps a mixture with trees only if
       it beats the best kNN + linear mixture in a cross-fitted test on the validation rows:
       log-loss lower by more than 2 standard errors *and* MCC not lower
       (:func:`genoray.heads.select.keep_trees`; otherwise the default kNN + linear head).
    5. Calibration: temperature scaling or isotonic regression, whichever has the lower
       2-fold cross-fitted log-loss on the validation part; then fitted on all of it.
    6. The chosen parts are refitted on all sampled rows (trees for the early-stopped number
       of rounds).

    Fitted attributes: ``classes_``, ``mixture_`` (weight per part), ``weight_`` (of the kNN
    vote), ``C_``, ``calibration_`` (temperature, or ``None`` when isotonic),
    ``calibration_method_``, ``linear_``, ``trees_`` (or ``None``), ``knn_``,
    ``ood_reference_`` (sorted leave-one-out k-th-neighbour cosine distances of at most
    10,000 sampled training rows), ``val_scores_`` (validation log-loss per mixture), ``selection_``
    (incl. ``tree_test``), ``fit_seconds_``, ``length_calibration_`` (or ``None``).
    """

    def __init__(self, k: int = HeadConfig.k, temperature: float = HeadConfig.temperature,
                 C: float | None = HeadConfig.C, val_fraction: float = HeadConfig.val_fraction,
                 seed: int = HeadConfig.seed, head: str = HeadConfig.head, max_rows: int = HeadConfig.max_rows,
                 ood_reference_rows: int = HeadConfig.ood_reference_rows,
                 fit_scan_rows: int = HeadConfig.fit_scan_rows, tree_threads: int = 0):
        self.k = k
        self.temperature = temperature
        self.C = C
        self.val_fraction = val_fraction
        self.seed = seed
        self.head = head
        self.max_rows = max_rows
        self.ood_reference_rows = ood_reference_rows
        self.fit_scan_rows = fit_scan_rows
        self.tree_threads = tree_threads

    @classmethod
    def from_config(cls, cfg: HeadConfig) -> "FusedHead":
        """A head with the settings of ``cfg``."""
        return cls(**{k: v for k, v in to_dict(cfg).items() if k != "overwrite"})  # overwrite: train_head's

    def fit(self, X, y, index=None, ids=None, sequences=None, encoder=None) -> "FusedHead":
        """Fit on embeddings ``X`` with labels ``y``.

        Args:
            index: the :class:`~genoray.index.VectorIndex` the kNN part votes over at
                prediction time (built from these rows, any order; ``X`` may be a sample of
                them). Default: an exact index over ``X``.
            ids: the index ids of the rows of ``X`` (required with ``index``).
            sequences, encoder: the rows' sequences (aligned with ``X``, or a callable from ids to
                sequences) and their encoder (or its factory): fit a temperature per length on validation
                rows cropped to a grid of lengths (:mod:`genoray.heads.length_calibration`).
        """
        if self.head not in HEAD_MODES:
            raise ValueError(f"head must be one of {sorted(HEAD_MODES)}, got {self.head!r}")
        if index is None:
            return self._fit(X, y, index, ids, sequences, encoder)
        with bounded_search(index, self.fit_scan_rows) as nprobe:
            self._fit(X, y, index, ids, sequences, encoder)
        self.selection_["fit_nprobe"] = nprobe
        return self

    def _fit(self, X, y, index, ids, sequences, encoder) -> "FusedHead":
        st = self._stage(X, y, index, ids, with_trees="trees" in HEAD_MODES[self.head])
        st.length.update(sequences=sequences, encoder=encoder)
        return self._finish(st)

    @classmethod
    def fit_modes(cls, modes, X, y, index=None, ids=None, **params) -> dict[str, "FusedHead"]:
        """One head per mode in ``modes`` (``linear``/``trees``/``auto``), each equal to
        ``FusedHead(head=mode, **params).fit(X, y, index, ids)``, with the work they share
        (kNN votes, the ``C`` grid, the early-stopped trees, the refits) done once; each
        head's ``fit_seconds_`` adds up the steps a fit of its mode alone runs."""
        heads = {m: cls(**{**params, "head": m}) for m in modes}
        for m in heads:
            if m not in HEAD_MODES:
                raise ValueError(f"head must be one of {sorted(HEAD_MODES)}, got {m!r}")
        first = next(iter(heads.values()))
        if index is None:
            stage = first._stage(X, y, index, ids, with_trees=any(m != "linear" for m in heads))
            return {m: h._finish(stage) for m, h in heads.items()}
        with bounded_search(index, first.fit_scan_rows):
            stage = first._stage(X, y, index, ids, with_trees=any(m != "linear" for m in heads))
            return {m: h._finish(stage) for m, h in heads.items()}

    def _stage(self, X, y, index, ids, with_trees: bool) -> _Stage:
        """Sample, split, and the parts' validation probabilities (see the class docstring)."""

        t0 = time.perf_counter()
        X = _check_X(X)
        y = np.asarray(y, dtype=object)
        classes = np.array(sorted(set(y)), dtype=object)
        codes = _encode(y, classes)
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
        knn = KNNVoteHead(k=self.k, temperature=self.temperature).attach(index, classes)
        # leave-one-out over a fixed-size stratified subsample: its cost grows with the index's
        # scan per query only, not with max_rows (it dominated a 1M-row fit)
        ref = stratified_sample(codes, self.ood_reference_rows, self.seed + 1)
        sims, _ = _loo_neighbours(index, X[ref], ids[ref], self.k)
        ood_reference = np.sort(1.0 - sims[:, -1]).astype(np.float64)
        # the vote on the validation rows uses only reference rows outside the validation part
        sims, pos = _loo_neighbours(index, X[va], ids[va], self.k, exclude=set(ids[va].tolist()))
        val = {"knn": knn.proba_from_neighbours(sims, pos)}
        t1 = time.perf_counter()
        best = None
        for C in (_C_GRID if self.C is None else (self.C,)):
            lin = LinearHead(C=C).fit(X[tr], y[tr])
            p = align_proba(lin.classes_, lin.predict_proba(X[va]), classes)
            loss = _log_loss(p, codes[va])
            if best is None or loss < best[0]:
                best = (loss, C, p, lin)
        assert best is not None  # the grid is never empty (for mypy)
        val["linear"] = best[2]
        t2 = time.perf_counter()
        tree_rounds, held_out = None, {"linear": best[3]}
        if with_trees:
            trees = self._new_trees().fit(X[tr], y[tr], classes=classes)
            val["trees"] = trees.predict_proba(X[va])
            tree_rounds, held_out["trees"] = trees.rounds_, trees
        return _Stage(X, y, codes, tr, va, classes, index, ood_reference, val, best[1], tree_rounds,
                      seconds={"knn": t1 - t0, "linear": t2 - t1, "trees": time.perf_counter() - t2},
                      length={"ids": ids, "rows": rows, "held_out": held_out})

    def _refit(self, stage: _Stage, part: str):
        """A part refitted on all sampled rows (trees for the early-stopped number of rounds),
        made once per stage."""
        if part not in stage.refits:
            t0 = time.perf_counter()
            if part == "linear":
                stage.refits[part] = LinearHead(C=stage.C).fit(stage.X, stage.y)
            else:
                stage.refits[part] = self._new_trees().fit(stage.X, stage.y, rounds=stage.tree_rounds,
                                                           classes=stage.classes)
            stage.seconds[f"refit_{part}"] = time.perf_counter() - t0
        return stage.refits[part]

    def _finish(self, st: _Stage) -> "FusedHead":
        """Choose the mixture (and, for ``auto``, whether to keep trees), calibrate, refit."""
        t0 = time.perf_counter()
        parts = HEAD_MODES[self.head]
        codes = st.codes[st.va]
        val = {n: st.val[n] for n in parts}
        self.classes_ = st.classes
        self.knn_ = KNNVoteHead(k=self.k, temperature=self.temperature).attach(st.index, self.classes_)
        self.ood_reference_ = st.ood_reference
        self.C_ = st.C
        scores, by_trees = best_mixtures(val, codes, parts)
        best_loss, best_mix = min(by_trees.values(), key=lambda b: b[0])
        self.tree_test_: dict[str, Any] | None = None
        if self.head == "auto" and best_mix.get("trees", 0) > 0:
            self.tree_test_ = keep_trees(val, codes, self.seed)
            if not self.tree_test_["keep"]:
                best_loss, best_mix = by_trees[False]
        self.mixture_ = {n: float(best_mix.get(n, 0.0)) for n in PARTS}
        self.weight_ = self.mixture_["knn"]
        self.val_scores_ = scores
        self._choose_calibration(mix(val, self.mixture_), codes)
        self.length_calibration_ = length_calibration.fit(self, st) if st.length.get("encoder") is not None else None
        own = time.perf_counter() - t0
        self.linear_ = self._refit(st, "linear")
        self.trees_ = self._refit(st, "trees") if self.mixture_["trees"] > 0 else None
        self.n_features_in_ = st.X.shape[1]
        steps = ["knn", "linear", "refit_linear"] + (["trees"] if "trees" in parts else []) + \
            (["refit_trees"] if self.trees_ is not None else [])
        self.fit_seconds_ = own + sum(st.seconds[s] for s in steps)
        tree_rounds = st.tree_rounds if "trees" in parts else None
        self.selection_ = {"metric": "log_loss", "candidates": self.head, "seed": self.seed,
                           "fit_rows": int(len(st.tr)), "val_rows": int(len(st.va)), "rows_used": int(len(st.y)),
                           "chosen": mixture_name(self.mixture_), "val_log_loss": float(best_loss),
                           "part_val_log_loss": {n: _log_loss(p, codes) for n, p in val.items()},
                           "tree_rounds": tree_rounds, "tree_test": self.tree_test_}
        return self

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
