"""Settings of what is fitted on top of the index: the fused head (:class:`HeadConfig`) and
the per-query out-of-distribution scorer (:class:`OODConfig`)."""

from __future__ import annotations

from typing import Literal

from genoray.config.base import config_class, validate


@config_class
class HeadConfig:
    """The fused head: kNN vote + logistic regression + gradient-boosted trees.

    Attributes:
        k: neighbours in the vote.
        temperature: softmax temperature over similarities in the vote.
        C: inverse L2 strength of the logistic regression; ``None`` chooses it from
            (0.01, 0.1, 1) on the validation split.
        val_fraction: part of the training split held out to choose the fusion weight and
            to calibrate the fused probabilities (temperature or isotonic, by cross-fitted log-loss).
        seed: split seed.
        head: parts the fused head may mix with the kNN vote: linear (the logistic regression;
            the default, the measured head of docs/benchmarks.md), trees (gradient-boosted trees) or auto
            (kNN, linear and trees; mixture chosen by validation log-loss, trees kept only if a
            cross-fitted test on the validation rows shows lower log-loss by > 2 standard errors
            and no lower MCC; otherwise exactly the linear head). trees and auto are opt-in: on
            the cells of bench/bench_shift.py (docs/shift.md) auto never lost MCC but took up to
            8x the fit time of linear (the bound for a default is 3x).
        max_rows: training rows the head fit uses at most (a seeded, class-stratified sample),
            which bounds its time and memory on large stores.
        ood_reference_rows: sampled training rows whose leave-one-out k-th-neighbour distances
            form the head's own OOD reference (a constant cost per fit, whatever the store size).
        fit_scan_rows: vectors one of the fit's leave-one-out neighbour searches (validation
            votes, OOD reference, length calibration) scans at most in an IVF index: its
            ``nprobe`` is lowered to ``nlist x fit_scan_rows / ntotal`` (at least 1, never above
            the index's recall-tuned value) for the fit only; prediction keeps the tuned value. So
            the fit's search cost per row stays constant as the index grows. A Flat index is
            searched exactly (``auto`` builds one only below ``IndexConfig.flat_threshold``
            rows); HNSW keeps its ``efSearch`` (cost ~ log n).
        overwrite: replace a head in the output directory made from another store or index or
            with other settings (without it such a run is refused and the old head kept).
    """

    k: int = 10
    temperature: float = 0.05
    C: float | None = None
    val_fraction: float = 0.2
    seed: int = 0
    head: Literal["linear", "trees", "auto"] = "linear"
    max_rows: int = 100_000
    ood_reference_rows: int = 10_000
    fit_scan_rows: int = 20_000
    overwrite: bool = False

    def __post_init__(self) -> None:
        validate(self,
                 (self.k >= 1, f"k must be >= 1, got {self.k}"),
                 (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
                 (self.C is None or self.C > 0, f"C must be > 0 (or None: chosen on the validation split), got {self.C}"),
                 (0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
                 (self.max_rows >= 2, f"max_rows must be >= 2, got {self.max_rows}"),
                 (self.ood_reference_rows >= 1, f"ood_reference_rows must be >= 1, got {self.ood_reference_rows}"),
                 (self.fit_scan_rows >= 1, f"fit_scan_rows must be >= 1, got {self.fit_scan_rows}"))



@config_class
class OODConfig:
    """The per-query OOD scorer fitted with every head (:mod:`genoray.scoring.ood`).

    Attributes:
        method: ``mahalanobis`` (class-conditional, shrinkage covariance) or ``knn``.
        rate: share of in-domain queries flagged (the calibration quantile is ``1 - rate``).
        max_fit_rows: reference rows used to fit (seeded subsample; bounds memory).
        max_cal_rows: held-out reference rows used to calibrate (disjoint from the fit rows).
        pca_dims: Mahalanobis distances on the first 4, 16 and 64 principal components; each is
            ranked against the calibration rows and the largest rank is the raw score, so a
            shift along a few strong directions is not drowned by many weak ones (and vice versa).
        k: neighbour rank of the ``knn`` method.
        markov_order: order of the reference Markov chain whose per-base negative
            log-likelihood is one more ranked view (only when fitted with sequences; 0 = off).
        length_ratio: ratio between consecutive calibration lengths (length-matched mode; also
            the length grid of the head's length calibration).
        min_length: shortest calibration length.
        seed: subsampling and cropping seed.
        combine: how the per-view ranks become one raw score: ``max`` (the largest rank) or
            ``fisher`` (``-2 sum log p`` of the views' upper-tail p-values); either is then
            calibrated on the held-out rows, so the flag rate holds for both.
        complexity_view: one more ranked view (with sequences): the Markov NLL minus the
            entropy of the query's own base composition (complexity-corrected likelihood).
    """

    method: Literal["mahalanobis", "knn"] = "mahalanobis"
    rate: float = 0.05
    max_fit_rows: int = 4000
    max_cal_rows: int = 1000
    pca_dims: tuple[int, ...] = (4, 16, 64)
    k: int = 10
    markov_order: int = 5
    length_ratio: float = 1.25
    min_length: int = 16
    seed: int = 0
    combine: Literal["max", "fisher"] = "max"
    complexity_view: bool = True

    def __post_init__(self) -> None:
        validate(self, (0 < self.rate < 0.5, f"OOD rate must be in (0, 0.5), got {self.rate}"),
                 (min(self.max_fit_rows, self.max_cal_rows, self.k, self.min_length) >= 1
                  and self.markov_order >= 0 and bool(self.pca_dims) and min(self.pca_dims) >= 1,
                  "max_fit_rows, max_cal_rows, k, min_length and pca_dims must be >= 1, markov_order >= 0"),
                 (self.length_ratio > 1, f"length_ratio must be > 1, got {self.length_ratio}"))


@config_class
class TargetConfig:
    """How an unlabeled target sample adapts the probabilities (``--target``; the safe rule of
    :func:`genoray.scoring.adapt.safe_target`).

    Attributes:
        alpha: a setting is changed only when its (1 - alpha) interval excludes "no change":
            the target priors' bootstrap interval must exclude the source prior of some class,
            the cross-fitted log-loss gain of the importance-weighted temperature must have a
            lower bound above 0.
        n_boot: bootstrap resamples of the target rows for the prior interval.
        clip: largest density ratio a source row gets (domain-classifier odds, mean 1).
        min_ess: importance-weighted temperature only when the weighted source rows keep at
            least this effective sample size (``(sum w)^2 / sum w^2``).
        max_rows: source and target rows each used at most (seeded sample).
        C: inverse L2 strength of the domain classifier (standardised logistic regression).
        auc_margin: the shift is taken for a label shift only when the domain classifier on the
            features beats the one on the posteriors by at most this AUC, and the posteriors of the
            source rows re-mixed to the estimated priors are told from the target's with AUC at
            most 0.5 + this.
        seed: sampling, cross-fitting and bootstrap seed.
    """

    alpha: float = 0.01
    n_boot: int = 400
    clip: float = 10.0
    min_ess: int = 50
    max_rows: int = 2000
    C: float = 0.1
    auc_margin: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self, (0 <= self.auc_margin < 0.5, f"auc_margin must be in [0, 0.5), got {self.auc_margin}"),
                 (0 < self.alpha < 0.5, f"alpha must be in (0, 0.5), got {self.alpha}"),
                 (self.n_boot >= 20, f"n_boot must be >= 20, got {self.n_boot}"),
                 (self.clip > 1, f"clip must be > 1, got {self.clip}"),
                 (min(self.min_ess, self.max_rows) >= 2, "min_ess and max_rows must be >= 2"),
                 (self.C > 0, f"C must be > 0, got {self.C}"))
