"""Distribution shift between a reference corpus and new data, in embedding space.

``ShiftDetector(cfg).fit(reference).score(new)`` returns a :class:`ShiftReport` with three
views, all on seeded subsamples (``max_samples`` per side) so they run on millions of rows:

* **MMD**: squared maximum mean discrepancy with an RBF kernel (bandwidth: median pairwise
  distance of the pooled sample) on a PCA projection fitted on reference rows that are not in
  the test; p-value from a permutation test of the (biased) statistic.
* **Classifier two-sample test**: held-out AUC of a logistic regression telling reference
  from new rows (fitted on one half of each sample, scored on the other); one-sided p-value
  from the Mann-Whitney null distribution of the AUC (normal approximation).
* **Per-row OOD**: the same calibrated score the predictor returns
  (:class:`genoray.scoring.ood.OODScorer`, fitted on reference rows, calibrated on held-out ones at
  rate ``1 - ood_quantile``, length-matched when sequences and the encoder are given); the
  fraction of new rows flagged is compared with the expected ``1 - ood_quantile``
  (beta-binomial p-value, which accounts for the threshold being estimated from held-out
  rows), overall and per group (label or domain).

``is_shift`` is true when any p-value is below ``alpha`` after a Bonferroni correction for
the three tests. Nothing in the detector is mutated by ``score``.

``genoray shift`` compares two stores without loading either: :func:`store_samples` reads a
seeded uniform sample of each (:func:`genoray.evaluation.sampling.read_sample`, two
streamed passes per store): of the reference at most :func:`reference_rows` rows (the most
the detector uses: ``max_samples`` for the tests plus ``10 x max(max_samples, 1000)`` for the
kNN set and the projection), of the new store at most ``max_samples``; source sequences are
re-read for the sampled rows only. Every row is used when a store holds no more, so the
report is then the one the whole stores give; it states the sample sizes (``sample``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from genoray.config import OODConfig, ShiftConfig, ShiftSelection
from genoray.embedding.store import EmbeddingStore
from genoray.evaluation.sampling import Sample, read_sample
from genoray.scoring.ood import OODScorer

log = logging.getLogger(__name__)
MIN_ROWS = 10  # the fewest rows a side the shift test scores


@dataclass
class ShiftReport:
    """Test statistics, p-values and the shift verdict for one comparison."""

    n_reference: int
    n_new: int
    mmd2: float
    mmd_p_value: float
    c2st_auc: float
    c2st_p_value: float
    ood_threshold: float
    ood_fraction: float
    ood_expected: float
    ood_p_value: float
    is_shift: bool
    by_group: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[np.sort(rng.choice(len(x), size=n, replace=False))]


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, n_permutations: int, rng: np.random.Generator) -> tuple[float, float]:
    """Biased MMD^2 with an RBF kernel (median heuristic) and its permutation p-value."""
    z = np.vstack([x, y]).astype(np.float64)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    med = np.median(d2[np.triu_indices(len(z), 1)])
    kern = np.exp(-d2 / max(med, 1e-12))
    n, m = len(x), len(y)

    def stat(assign: np.ndarray) -> float:
        a = np.where(assign, 1.0 / n, -1.0 / m)
        return float(a @ kern @ a)

    base = np.r_[np.ones(n, bool), np.zeros(m, bool)]
    observed = stat(base)
    null = np.array([stat(rng.permutation(base)) for _ in range(n_permutations)])
    return observed, float((1 + np.sum(null >= observed)) / (1 + n_permutations))


def classifier_two_sample_test(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
    """Held-out AUC of a reference-vs-new logistic regression and its one-sided p-value.

    The classifier is fitted on a random half of each sample and scored on the other half, so
    under the null the held-out AUC follows the Mann-Whitney distribution exactly (a
    cross-validated AUC does not, and was measured to over-reject)."""
    from math import erf, sqrt

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    z = np.vstack([x, y])
    t = np.r_[np.zeros(len(x)), np.ones(len(y))]
    fit = np.zeros(len(z), dtype=bool)
    for cls in (0, 1):
        members = np.flatnonzero(t == cls)
        fit[rng.choice(members, size=len(members) // 2, replace=False)] = True
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(z[fit], t[fit])
    p = clf.predict_proba(z[~fit])[:, 1]
    auc = float(roc_auc_score(t[~fit], p))
    n1, n2 = int(np.sum(t[~fit] == 0)), int(np.sum(t[~fit] == 1))
    sd = sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))
    return auc, float(0.5 * (1 - erf((auc - 0.5) / sd / sqrt(2))))


class ShiftDetector:
    """Fit on reference embeddings, score new embeddings (see the module docstring)."""

    def __init__(self, cfg: ShiftConfig | None = None):
        self.cfg = cfg or ShiftConfig()

    def fit(self, reference: np.ndarray, labels=None, sequences=None, encoder=None) -> "ShiftDetector":
        """Fit on reference embeddings; ``labels`` make the OOD score class-conditional and
        ``sequences`` + ``encoder`` make it length-matched (see :mod:`genoray.scoring.ood`)."""
        from sklearn.decomposition import PCA

        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        ref = np.asarray(reference, dtype=np.float32)
        if len(ref) < MIN_ROWS:
            raise ValueError(f"need at least {MIN_ROWS} reference rows, got {len(ref)}")
        self.n_reference_ = len(ref)
        # disjoint halves: rows to compare against (kNN set) and rows that calibrate the threshold,
        # so new rows and calibration rows are scored the same way
        order = rng.permutation(len(ref))
        n_cal = min(cfg.max_samples, len(ref) // 2)
        self.ref_sample_ = ref[np.sort(order[:n_cal])]
        knn_ref = ref[np.sort(order[n_cal : n_cal + 10 * max(cfg.max_samples, 1000)])]
        # the projection is fitted on rows that take part in neither test: fitting it on the
        # reference sample itself makes the permutation test anti-conservative (measured: 20%
        # false positives on random halves instead of 5%)
        pca_rows = knn_ref if len(knn_ref) >= 10 else self.ref_sample_
        self.pca_ = PCA(n_components=min(cfg.pca_dim, ref.shape[1], len(pca_rows) - 1), random_state=cfg.seed).fit(pca_rows)
        self.ood_ = OODScorer(OODConfig(rate=1.0 - cfg.ood_quantile, k=cfg.k, seed=cfg.seed)).fit(
            ref, labels, sequences, encoder)
        self.threshold_ = self.ood_.threshold()
        return self

    def ood_scores(self, x: np.ndarray, sequences=None, encoder=None) -> np.ndarray:
        """Calibrated per-row OOD scores (length-matched when ``sequences`` and ``encoder`` are given)."""
        if sequences is not None and encoder is not None:
            return self.ood_.score_sequences(sequences, encoder, x)
        return self.ood_.score(x)

    def score(self, new: np.ndarray, groups: np.ndarray | None = None, sequences=None, encoder=None) -> ShiftReport:
        """Compare new embeddings with the reference: MMD permutation test, classifier two-sample test
        and the fraction of OOD rows (overall and per group; length-matched when ``sequences`` and
        ``encoder`` are given)."""
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed + 1)
        new = np.asarray(new, dtype=np.float32)
        if len(new) < MIN_ROWS:
            raise ValueError(f"need at least {MIN_ROWS} new rows, got {len(new)}")
        idx = np.sort(rng.choice(len(new), size=min(cfg.max_samples, len(new)), replace=False))
        sample = new[idx]
        px, py = self.pca_.transform(self.ref_sample_), self.pca_.transform(sample)
        mmd2, p_mmd = mmd_permutation_test(px, py, cfg.n_permutations, rng)
        auc, p_c2st = classifier_two_sample_test(px, py, cfg.seed)
        seqs = None if sequences is None else [sequences[i] for i in idx]
        flagged = self.ood_.flag(self.ood_scores(sample, seqs, encoder))
        expected = 1.0 - cfg.ood_quantile
        p_ood = self.ood_.flagged_p_value(int(flagged.sum()), len(flagged))
        by_group = {}
        if groups is not None:
            g = np.asarray(groups, dtype=object)[idx]
            for name in sorted({str(v) for v in g}):
                m = np.array([str(v) == name for v in g])
                by_group[name] = {"n": int(m.sum()), "ood_fraction": float(flagged[m].mean())}
        corrected = cfg.alpha / 3
        return ShiftReport(
            n_reference=self.n_reference_, n_new=len(new), mmd2=mmd2, mmd_p_value=p_mmd, c2st_auc=auc,
            c2st_p_value=p_c2st, ood_threshold=self.threshold_, ood_fraction=float(flagged.mean()),
            ood_expected=expected, ood_p_value=p_ood,
            is_shift=bool(min(p_mmd, p_c2st, p_ood) < corrected), by_group=by_group, config=asdict(cfg))


def reference_rows(cfg: ShiftConfig) -> int:
    """Reference rows :meth:`ShiftDetector.fit` uses at most: ``max_samples`` compared in the
    tests and up to ``10 x max(max_samples, 1000)`` more for the kNN set and the projection."""
    return cfg.max_samples + 10 * max(cfg.max_samples, 1000)


def store_samples(reference: EmbeddingStore, new: EmbeddingStore, select: ShiftSelection,
                  cfg: ShiftConfig) -> tuple[Sample, Sample]:
    """Bounded, seeded, uniform samples of the two stores' selected splits: ``min(n,
    reference_rows(cfg))`` reference rows and ``min(n, max_samples)`` new rows (see the module
    docstring); uniform, so the tests compare the stores' own mixes of labels."""
    return (read_sample(reference, select.reference_split, reference_rows(cfg), cfg.seed, stratify=False),
            read_sample(new, select.new_split, cfg.max_samples, cfg.seed + 1, stratify=False))


def drift_rule(alpha: float, seed: int = ShiftConfig.seed) -> Callable[[np.ndarray, np.ndarray], str | None]:
    """The nightly reindex's first drift rule for :func:`genoray.index.delta.extend_index`: the
    shift test of the new rows against a sample of the old ones at ``alpha`` (1,000 rows a side);
    returns why the quantizer needs retraining, or ``None``. Fewer than ``MIN_ROWS`` new rows
    cannot be tested and cannot move a quantizer trained on the old ones: ``None`` (the delta's
    recall check still applies)."""
    def rule(reference: np.ndarray, new: np.ndarray) -> str | None:
        if len(new) < MIN_ROWS:
            return None
        shift = ShiftDetector(ShiftConfig(max_samples=1000, alpha=alpha, seed=seed)).fit(reference).score(new)
        if not shift.is_shift:
            return None
        return (f"the shift test flags a shift (MMD p {shift.mmd_p_value:.3g}, classifier p {shift.c2st_p_value:.3g}, "
                f"kNN-OOD p {shift.ood_p_value:.3g})")

    return rule


def embedding_map(detector: ShiftDetector, new: np.ndarray) -> dict[str, list[list[float]]]:
    """The first two principal components (fitted on reference rows) of the detector's
    reference sample and of a seeded sample of ``new`` (``max_samples`` rows): the points of
    the report's embedding map, ``{"reference": [xs, ys], "new": [xs, ys]}``."""
    rng = np.random.default_rng(detector.cfg.seed + 2)
    sample = _subsample(np.asarray(new, dtype=np.float32), detector.cfg.max_samples, rng)
    a, b = detector.pca_.transform(detector.ref_sample_), detector.pca_.transform(sample)
    if a.shape[1] < 2:  # a one-dimensional projection: plot it against zero
        a, b = np.c_[a, np.zeros(len(a))], np.c_[b, np.zeros(len(b))]
    return {"reference": [[round(float(v), 5) for v in a[:, 0]], [round(float(v), 5) for v in a[:, 1]]],
            "new": [[round(float(v), 5) for v in b[:, 0]], [round(float(v), 5) for v in b[:, 1]]]}


def plot_shift(detector: ShiftDetector, new: np.ndarray, path: str) -> None:
    """PCA scatter of reference vs new rows as a PNG (needs matplotlib: ``pip install genoray[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'genoray[plot]'") from e
    rng = np.random.default_rng(detector.cfg.seed + 2)
    sample = _subsample(np.asarray(new, dtype=np.float32), detector.cfg.max_samples, rng)
    a, b = detector.pca_.transform(detector.ref_sample_), detector.pca_.transform(sample)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(a[:, 0], a[:, 1], s=4, alpha=0.5, label=f"reference ({len(a)})")
    ax.scatter(b[:, 0], b[:, 1], s=4, alpha=0.5, label=f"new ({len(b)})")
    ax.set_xlabel("PC1 (fitted on reference)")
    ax.set_ylabel("PC2")
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
