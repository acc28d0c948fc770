"""Adapting to a new domain without its labels.

* :class:`DomainNormalizer`: inductive per-domain standardisation. ``fit`` learns each
  domain's mean and standard deviation from a sample of its unlabeled rows; ``transform``
  applies them to any rows of that domain, including new rows never seen in ``fit``; saved
  as JSON + npz with sha256 (no pickle). :func:`domain_normalize` is the transductive
  special case (fit and transform on the same rows).
* :class:`PseudoLabeler`: confidence-curriculum self-training. Fit a head on the labeled
  source; predict an unlabeled target *sample*; add the most confident fraction of target rows with
  their predicted labels (growing each round), always keeping every source row (replay, so
  the source is not forgotten); stop when the score on a labeled source validation split
  stops improving or the target is used up. The fitted head then predicts any new target
  rows (inductive: the rows it scores need not be the sample it was fitted on).
* :func:`safe_target`: the ``--target`` rule that should never make calibration or MCC worse.
  (1) *importance-weighted temperature* (covariate shift, after Shimodaira 2000 and calibrated
  prediction under covariate shift, Park et al. 2020): a standardised logistic regression
  separates labeled source validation rows from the unlabeled target sample (5-fold
  cross-fitted); its odds are each source row's density ratio ``p_t(x) / p_s(x)`` (mean 1,
  clipped at ``clip``); the temperature minimising the *weighted* log-loss of the source rows
  estimates the one the target needs. It is used only when the weighted rows keep an effective
  sample size of ``min_ess`` and the cross-fitted weighted log-loss gain over the unweighted
  temperature has a one-sided ``(1 - alpha)`` lower bound above 0; the target then gets the
  *ratio* of the two temperatures (so source rows the head saw in training, whose probabilities
  are sharper, shift both alike). (2) *label shift* (:class:`genoray.scoring.priors.PriorShift`):
  re-weighting only when the bootstrap interval of the target priors excludes the source prior,
  the shift looks like a label shift (a domain classifier on the features does not beat one on
  the posteriors by more than ``auc_margin``, and the source rows re-mixed to the estimated priors
  have posteriors the target's cannot be told from) and the gates of that module hold. (3) Neither supported: probabilities unchanged. What was done and
  why is the returned record's ``reason`` and ``extra``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genoray.config import TargetConfig
from genoray.heads import calibrate
from genoray.infra.artifacts import read_npz, read_signed, sha256_file, write_npz, write_signed
from genoray.infra.errors import ChecksumError
from genoray.scoring.priors import PriorShift, em_priors

log = logging.getLogger(__name__)
MANIFEST = "normalizer.json"
ARRAYS = "normalizer.npz"


class DomainNormalizer:
    """Per-domain standardisation fitted on unlabeled samples and applied to new rows.

    Args:
        eps: a feature whose standard deviation is below this is only centred.
    """

    def __init__(self, eps: float = 1e-6):
        self.eps = eps

    def fit(self, x: np.ndarray, domains) -> "DomainNormalizer":
        """Fit per-domain mean and scale of ``x`` (one domain name per row); returns ``self``."""
        x = np.asarray(x, dtype=np.float64)
        doms = np.asarray(domains, dtype=object).astype(str)
        if len(doms) != len(x):
            raise ValueError(f"{len(doms)} domains for {len(x)} rows")
        self.domains_ = sorted(set(doms))
        self.mean_ = np.stack([x[doms == d].mean(axis=0) for d in self.domains_])
        sd = np.stack([x[doms == d].std(axis=0) for d in self.domains_])
        self.scale_ = np.where(sd > self.eps, sd, 1.0)
        self.counts_ = [int(np.sum(doms == d)) for d in self.domains_]
        return self

    def transform(self, x: np.ndarray, domains) -> np.ndarray:
        """Standardise each row with its domain's fitted statistics (unknown domain: error)."""
        x = np.asarray(x, dtype=np.float64)
        doms = np.asarray(domains, dtype=object).astype(str)
        if doms.ndim == 0:
            doms = np.full(len(x), str(doms))
        unknown = set(doms) - set(self.domains_)
        if unknown:
            raise ValueError(f"domains {sorted(unknown)} were not in fit (fitted: {self.domains_})")
        out = np.empty_like(x)
        for i, d in enumerate(self.domains_):
            m = doms == d
            out[m] = (x[m] - self.mean_[i]) / self.scale_[i]
        return out.astype(np.float32)

    def save(self, out_dir: str | Path) -> None:
        """``normalizer.json`` (signed) + ``normalizer.npz`` (its sha256 in the JSON)."""
        out = Path(out_dir)
        write_npz(out / ARRAYS, mean=self.mean_, scale=self.scale_)
        write_signed(out / MANIFEST, {"kind": "domain_normalizer", "domains": self.domains_, "counts": self.counts_,
                                      "eps": self.eps, "npz_sha256": sha256_file(out / ARRAYS)})

    @classmethod
    def load(cls, path: str | Path) -> DomainNormalizer:
        """Read a normalizer written by :meth:`save`, verifying both sha256 checksums."""
        path = Path(path)
        payload = read_signed(path / MANIFEST)
        if payload.get("kind") != "domain_normalizer" or sha256_file(path / ARRAYS) != payload.get("npz_sha256"):
            raise ChecksumError(f"{path}: {MANIFEST} or {ARRAYS} does not match its sha256")
        a = read_npz(path / ARRAYS)
        self = cls(payload["eps"])
        self.domains_, self.counts_, self.mean_, self.scale_ = payload["domains"], payload["counts"], a["mean"], a["scale"]
        return self


def domain_normalize(x: np.ndarray, domains: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-domain standardisation using each domain's own rows (transductive: fit = transform rows)."""
    return DomainNormalizer(eps).fit(x, domains).transform(x, domains)


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


TEMPERATURES = np.exp(np.linspace(np.log(0.2), np.log(20.0), 121))


def _row_nll(p: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per-row log-loss at every temperature of :data:`TEMPERATURES`: shape ``(n_t, n)``."""
    logp = np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0))
    z = logp[None, :, :] / TEMPERATURES[:, None, None]
    z -= z.max(axis=2, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=2))
    return lse - z[:, np.arange(len(codes)), codes]


def domain_odds(xs: np.ndarray, xt: np.ndarray, C: float = TargetConfig.C, seed: int = 0) -> tuple[np.ndarray, float]:
    """5-fold cross-fitted ``P(target | x)`` of a standardised logistic regression separating
    source rows ``xs`` from target rows ``xt`` (source rows first, then target rows), and its
    out-of-fold AUC (0.5: the features do not tell the two apart)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([xs, xt]).astype(np.float64)
    t = np.r_[np.zeros(len(xs)), np.ones(len(xt))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    p = cross_val_predict(clf, x, t, cv=folds, method="predict_proba")[:, 1]
    return p, float(roc_auc_score(t, p))


def domain_model(xs: np.ndarray, xt: np.ndarray, source_odds: np.ndarray, C: float = TargetConfig.C) -> dict:
    """The per-query OOD score a target sample allows: a standardised logistic regression
    fitted on source rows ``xs`` vs target rows ``xt`` (JSON-ready: mean, scale, coef, intercept)
    and, as its calibration, the sorted cross-fitted ``P(target | x)`` of the source rows
    (``source_odds``): a query's score is the share of source rows it exceeds
    (:meth:`genoray.scoring.priors.PriorShift.domain_ood`)."""
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([xs, xt]).astype(np.float64)
    mean, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    lr = LogisticRegression(C=C, max_iter=2000).fit((x - mean) / sd, np.r_[np.zeros(len(xs)), np.ones(len(xt))])
    return {"mean": mean.tolist(), "scale": sd.tolist(), "coef": lr.coef_[0].tolist(),
            "intercept": float(lr.intercept_[0]), "calibration": np.sort(np.asarray(source_odds, dtype=np.float64)).tolist()}


def density_ratios(p_target: np.ndarray, n_source: int, n_target: int, clip: float = TargetConfig.clip) -> np.ndarray:
    """Density ratios ``p_t(x) / p_s(x)`` of source rows from their ``P(target | x)``: the odds
    times ``n_source / n_target``, scaled to mean 1 and clipped at ``clip`` (then mean 1 again)."""
    p = np.clip(np.asarray(p_target, dtype=np.float64), 1e-6, 1 - 1e-6)
    w = p / (1 - p) * n_source / max(n_target, 1)
    w = np.minimum(w / w.mean(), clip)
    return w / w.mean()


def iw_temperature(p_val: np.ndarray, codes: np.ndarray, w: np.ndarray, alpha: float = TargetConfig.alpha,
                   min_ess: int = TargetConfig.min_ess, seed: int = 0) -> tuple[float, dict[str, Any], str]:
    """The importance-weighted temperature decision (see the module docstring): the relative
    temperature to apply (1 = none), the numbers, and the reason."""
    from scipy.stats import norm

    codes = np.asarray(codes, dtype=np.int64)
    w = np.asarray(w, dtype=np.float64)
    nll = _row_nll(p_val, codes)  # (n_t, n)
    t0 = float(TEMPERATURES[int(np.argmin(nll.mean(axis=1)))])
    tw = float(TEMPERATURES[int(np.argmin(nll @ w))])
    ess = float(w.sum() ** 2 / np.sum(w ** 2))
    fold = np.random.default_rng(seed).permutation(len(codes)) % 2
    i0 = int(np.argmin(nll.mean(axis=1)))
    gain = np.zeros(len(codes))
    for f in (0, 1):  # the weighted temperature chosen on one half, scored on the other
        m = fold == f
        j = int(np.argmin(nll[:, ~m] @ w[~m]))
        gain[m] = nll[i0, m] - nll[j, m]
    mean = float(np.sum(w * gain) / w.sum())
    se = float(np.sqrt(np.sum((w * (gain - mean)) ** 2)) / w.sum())
    lower = mean - float(norm.ppf(1 - alpha)) * se
    info = {"temperature_unweighted": t0, "temperature_weighted": tw, "effective_rows": ess,
            "source_rows": int(len(codes)), "weighted_gain": mean, "weighted_gain_lower": lower}
    if ess < min_ess:
        return 1.0, info, (f"importance weights leave {ess:.0f} effective source rows (< {min_ess}): the target is "
                           "outside the source's support, temperature kept")
    if lower <= 0:
        return 1.0, info, (f"importance-weighted temperature {tw:.3g} vs {t0:.3g} unweighted: cross-fitted weighted "
                           f"log-loss gain {mean:.4f} (lower bound {lower:.4f} <= 0): temperature kept")
    rel = tw / t0
    return rel, info, (f"importance-weighted temperature {tw:.3g} vs {t0:.3g} unweighted on {len(codes)} source rows "
                       f"({ess:.0f} effective): cross-fitted weighted log-loss gain {mean:.4f} > 0 (lower bound "
                       f"{lower:.4f}): every target row tempered by T = {rel:.3g}")


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def safe_target(p_val: np.ndarray, codes_val: np.ndarray, x_val: np.ndarray | None, p_tgt: np.ndarray,
                x_tgt: np.ndarray, classes, source_priors, cfg: TargetConfig | None = None,
                **gates: Any) -> PriorShift:
    """The ``--target`` decision (module docstring): ``p_val`` / ``codes_val`` / ``x_val``:
    calibrated probabilities, class codes and features of labeled source validation rows
    (``x_val=None``: none available, no temperature); ``p_tgt`` / ``x_tgt``: the unlabeled
    target sample's probabilities and features; ``gates``: ``ood_flags``, ``ood_rate``,
    ``ood_p_value``, ``length_ratio`` of :meth:`PriorShift.estimate`. Returns the record whose
    ``apply`` adapts new target rows (``temper_ood`` = the temperature)."""
    from sklearn.metrics import roc_auc_score

    cfg = cfg or TargetConfig()
    p_tgt = np.asarray(p_tgt, dtype=np.float64)
    temperature, why = 1.0, "no labeled source rows: temperature kept"
    extra: dict[str, Any] = {}
    if x_val is not None and len(x_val) >= 2 * cfg.min_ess:
        sv = _sample(len(x_val), cfg.max_rows, cfg.seed)
        st = _sample(len(x_tgt), cfg.max_rows, cfg.seed + 1)
        odds, auc = domain_odds(np.asarray(x_val)[sv], np.asarray(x_tgt)[st], cfg.C, cfg.seed)
        w = density_ratios(odds[: len(sv)], len(sv), len(st), cfg.clip)
        extra["domain_model"] = domain_model(np.asarray(x_val)[sv], np.asarray(x_tgt)[st], odds[: len(sv)], cfg.C)
        temperature, info, why = iw_temperature(np.asarray(p_val)[sv], np.asarray(codes_val)[sv], w, cfg.alpha,
                                                 cfg.min_ess, cfg.seed)
        extra.update(info)
        # Under pure label shift p(target | x) depends on x only through the posterior, so a domain
        # classifier on the features must not beat one on the posteriors by > auc_margin; and with
        # the source rows re-mixed to the EM priors the two sets' posteriors must look alike.
        logp = np.log(np.clip(np.vstack([np.asarray(p_val)[sv], p_tgt[st]]), 1e-12, 1.0))
        post, auc_post = domain_odds(logp[: len(sv)], logp[len(sv):], cfg.C, cfg.seed)
        src = np.asarray(source_priors, dtype=np.float64) / np.sum(source_priors)
        codes = np.asarray(codes_val, dtype=np.int64)[sv]
        pi = em_priors(calibrate(p_tgt[st], temperature), src)
        auc_mix = float(roc_auc_score(np.r_[np.zeros(len(sv)), np.ones(len(st))], post,
                                      sample_weight=np.r_[pi[codes] / src[codes], np.ones(len(st))]))
        extra.update(domain_auc=auc, domain_auc_posterior=auc_post, domain_auc_remixed=auc_mix)
        why = (f"domain classifier AUC {auc:.3f} on the features, {auc_post:.3f} on the posteriors, {auc_mix:.3f} on "
               f"the posteriors with the source re-mixed to the estimated priors; {why}")
        if auc > auc_post + cfg.auc_margin or auc_mix > 0.5 + cfg.auc_margin:
            gates["covariate_auc"] = (auc, auc_post, auc_mix)
    extra["temperature_reason"] = why
    return PriorShift.estimate(p_tgt, classes, source_priors, alpha=cfg.alpha, n_boot=cfg.n_boot, seed=cfg.seed,
                               temperature=temperature, extra=extra, temperature_reason=why, **gates)

