"""Label-shift correction: estimate a target's class priors from unlabeled rows and re-weight.

Under label shift (``p(x | y)`` fixed, ``p(y)`` changed) the calibrated source posteriors
``p_s(y | x)`` become target posteriors by Bayes' rule::

    p_t(y | x)  ∝  p_s(y | x) * pi_t(y) / pi_s(y)

:func:`em_priors` estimates ``pi_t`` by the EM algorithm of Saerens, Latinne & Decaestecker
(Neural Computation 14(1), 2002): alternate the re-weighting above with ``pi_t = mean p_t(y|x)``
over the unlabeled target rows. :class:`PriorShift` packages the estimate, the decision and a
saveable JSON form.

**Do-no-harm decision.** The correction is applied only when all four hold:

1. *the label-shift model is plausible*: re-weighting assumes ``p(x | y)`` is unchanged, so the
   target rows must look in-distribution. The share of target rows flagged by the per-query
   OOD score (:mod:`genoray.scoring.ood`) is compared with its calibrated rate (one-sided binomial
   test at ``alpha``); when the target is flagged as covariate-shifted, EM attributes the
   shift to the priors and was measured to push every prediction into one class (MCC to 0
   on composition shifts in ``bench/bench_shift.py``), so nothing is re-weighted;
2. *the source calibration holds on the target*: the probabilities were calibrated on rows of
   the reference length; when the target's median length is outside ``[L / 1.5, 1.5 L]``,
   EM on miscalibrated probabilities was measured to invent prior shifts (MCC -0.03 to -0.11
   on cropped or joined rows), so nothing is re-weighted;
3. *the data support a prior change*: the ``(1 - alpha)`` bootstrap interval of the estimated
   target prior excludes the source prior for some class (``alpha`` 0.01 by default), so no
   correction is made on noise alone (Saerens et al.'s likelihood-ratio statistic is reported).

4. *the correction does not trade away the ranking*: re-weighting moves the decision threshold
   towards the estimated majority class, which raises accuracy but can lower MCC (measured:
   -0.145 on a human TATA target with non-promoters cut to 20%). Without labels, the MCC of
   the unadapted and the re-weighted labels is estimated on the target rows with the
   re-weighted posteriors as soft labels (:func:`expected_mcc`); when the re-weighted labels
   lose more than ``MCC_TOLERANCE`` (0.02), nothing is re-weighted.

The interval of gate 3: the target rows are resampled ``n_boot`` times and EM is run on each
resample (vectorised, :func:`bootstrap_priors`; percentile interval). A target flagged as covariate-shifted is not
re-weighted and no longer tempered to an uninformed confidence (that pulled every row of a
well-predicted cross-species target towards 0.5: ECE 0.06 -> 0.32 at unchanged accuracy);
the only temperature a target gets is the importance-weighted one of
:func:`genoray.scoring.adapt.safe_target`, passed in as ``temperature`` and applied before the
re-weighting.

The decision and its reason travel with every prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genoray.heads import calibrate
from genoray.infra.artifacts import read_signed, write_signed
from genoray.infra.documents import check_format

FILE = "priors.json"
FORMAT_VERSION = 1
MCC_TOLERANCE = 0.02


def expected_mcc(belief: np.ndarray, predicted: np.ndarray) -> float:
    """Matthews correlation of the labels ``predicted`` (class codes) against soft true labels
    ``belief`` (rows of class probabilities): the multi-class MCC of the expected confusion
    matrix ``C[true, pred] = sum_i belief[i, true] * [pred_i == pred]``."""
    b = np.asarray(belief, dtype=np.float64)
    onehot = np.eye(b.shape[1])[np.asarray(predicted, dtype=np.int64)]
    c = b.T @ onehot
    t, p, n, correct = c.sum(axis=1), c.sum(axis=0), c.sum(), np.trace(c)
    den = np.sqrt(max(n * n - p @ p, 0.0) * max(n * n - t @ t, 0.0))
    return float((correct * n - t @ p) / den) if den > 0 else 0.0


def reweight(proba: np.ndarray, source_priors: np.ndarray, target_priors: np.ndarray) -> np.ndarray:
    """``p_s(y|x) * pi_t / pi_s``, renormalised per row."""
    w = np.asarray(target_priors, dtype=np.float64) / np.clip(np.asarray(source_priors, dtype=np.float64), 1e-12, None)
    p = np.asarray(proba, dtype=np.float64) * w
    return p / np.clip(p.sum(axis=1, keepdims=True), 1e-300, None)


def em_priors(proba: np.ndarray, source_priors: np.ndarray, max_iter: int = 1000, tol: float = 1e-8) -> np.ndarray:
    """Target class priors from calibrated source posteriors of unlabeled target rows (Saerens EM)."""
    p = np.asarray(proba, dtype=np.float64)
    src = np.asarray(source_priors, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(src) or len(p) == 0:
        raise ValueError(f"expected (n > 0, {len(src)}) probabilities, got {p.shape}")
    pi = src.copy()
    for _ in range(max_iter):
        new = reweight(p, src, pi).mean(axis=0)
        new = np.clip(new, 1e-6, None)
        new /= new.sum()
        if np.max(np.abs(new - pi)) < tol:
            pi = new
            break
        pi = new
    return pi


def bootstrap_priors(proba: np.ndarray, source_priors: np.ndarray, n_boot: int = 400, alpha: float = 0.01,
                     seed: int = 0, max_iter: int = 300, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """The ``(1 - alpha)`` percentile interval (lower, upper; one value per class) of the EM
    target priors over ``n_boot`` bootstrap resamples of the rows (all resamples run at once)."""
    p = np.asarray(proba, dtype=np.float64)
    src = np.asarray(source_priors, dtype=np.float64)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(p), np.full(len(p), 1.0 / len(p)), size=n_boot).astype(np.float64)  # (B, n)
    ratio = p / np.clip(src, 1e-12, None)  # (n, C)
    pi = np.tile(src, (n_boot, 1))
    for _ in range(max_iter):
        r = ratio[None, :, :] * pi[:, None, :]
        r /= np.clip(r.sum(axis=2, keepdims=True), 1e-300, None)
        new = np.einsum("bn,bnc->bc", counts, r) / len(p)
        new = np.clip(new, 1e-6, None)
        new /= new.sum(axis=1, keepdims=True)
        done = np.max(np.abs(new - pi)) < tol
        pi = new
        if done:
            break
    return np.quantile(pi, alpha / 2, axis=0), np.quantile(pi, 1 - alpha / 2, axis=0)


def log_likelihood(proba: np.ndarray, source_priors: np.ndarray, target_priors: np.ndarray) -> float:
    """Log-likelihood of the target rows under priors ``target_priors`` (up to a constant):
    ``sum_i log sum_y p_s(y|x_i) pi_t(y) / pi_s(y)``."""
    w = np.asarray(target_priors, dtype=np.float64) / np.clip(np.asarray(source_priors, dtype=np.float64), 1e-12, None)
    return float(np.sum(np.log(np.clip(np.asarray(proba, dtype=np.float64) @ w, 1e-300, None))))


@dataclass
class PriorShift:
    """Estimated target priors and the decision whether to correct (see the module docstring)."""

    classes: list[str]
    source_priors: list[float]
    target_priors: list[float]
    n_target: int
    lr_statistic: float
    p_value: float
    alpha: float
    applied: bool
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)
    temper_ood: float = 1.0

    @classmethod
    def estimate(cls, proba: np.ndarray, classes, source_priors, alpha: float = 0.01,
                 ood_flags: np.ndarray | None = None, ood_rate: float = 0.05,
                 length_ratio: float | None = None, ood_p_value: float | None = None, n_boot: int = 400,
                 seed: int = 0, temperature: float = 1.0, extra: dict[str, Any] | None = None,
                 temperature_reason: str = "", covariate_auc: tuple[float, ...] | None = None) -> "PriorShift":
        """Estimate from calibrated probabilities of unlabeled target rows and decide;
        ``ood_flags``: the per-row OOD flags of the same rows (their calibrated rate ``ood_rate``);
        ``length_ratio``: target median length / reference length; ``ood_p_value``: the OOD
        scorer's own p-value for the flagged count (default: binomial at ``ood_rate``);
        ``n_boot``, ``seed``: the bootstrap of the prior interval; ``temperature``: applied to
        every target row before the priors are estimated (the importance-weighted temperature,
        1 = none), ``temperature_reason`` and ``extra`` its record; ``covariate_auc``: (domain AUC on
        the features, on the posteriors) when the first exceeds the second by the covariate margin
        of :func:`genoray.scoring.adapt.safe_target` (not re-weighted)."""
        from scipy.stats import binom, chi2

        src = np.asarray(source_priors, dtype=np.float64)
        src = src / src.sum()
        proba = calibrate(np.asarray(proba, dtype=np.float64), temperature) if temperature != 1.0 else proba
        pi = em_priors(proba, src)
        stat = max(0.0, 2.0 * (log_likelihood(proba, src, pi) - log_likelihood(proba, src, src)))
        pv = float(chi2.sf(stat, max(len(src) - 1, 1)))
        lo, hi = bootstrap_priors(proba, src, n_boot, alpha, seed)
        excludes = bool(np.any((lo > src) | (hi < src)))
        est = ", ".join(f"{c}: {s:.3f} -> {t:.3f} [{a:.3f}, {b:.3f}]" for c, s, t, a, b in zip(classes, src, pi, lo, hi))
        extra = {**(extra or {}), "prior_interval": [[float(a), float(b)] for a, b in zip(lo, hi)],
                 "interval_level": 1 - alpha}
        covariate = False
        if ood_flags is not None and len(ood_flags):
            k, n = int(np.sum(ood_flags)), len(ood_flags)
            p_ood = float(binom.sf(k - 1, n, ood_rate)) if ood_p_value is None else float(ood_p_value)
            extra.update(ood_fraction=k / n, ood_expected=ood_rate, ood_p_value=p_ood)
            covariate = p_ood < alpha
        if covariate_auc is not None:
            covariate = True
            extra.update(ood_fraction=extra.get("ood_fraction", float("nan")), covariate_auc=list(covariate_auc))
        other_length = length_ratio is not None and not (1 / 1.5 <= length_ratio <= 1.5)
        if length_ratio is not None:
            extra["length_ratio"] = float(length_ratio)
        mcc_none = mcc_adapted = 0.0
        if excludes and not covariate and not other_length:
            adapted = reweight(proba, src, pi)
            mcc_none = expected_mcc(adapted, np.asarray(proba).argmax(axis=1))
            mcc_adapted = expected_mcc(adapted, adapted.argmax(axis=1))
            extra.update(expected_mcc_unadapted=mcc_none, expected_mcc_reweighted=mcc_adapted)
        loses = mcc_adapted < mcc_none - MCC_TOLERANCE
        if excludes and not covariate and not other_length and len(set(reweight(proba, src, pi).argmax(axis=1))) < 2:
            loses = True  # re-weighting would put every row in one class: no ranking left
            extra["one_class"] = True
        applied = excludes and not covariate and not other_length and not loses
        level = f"{1 - alpha:.0%} bootstrap interval"
        if other_length and excludes:
            reason = (f"target rows are {length_ratio:.2f}x the reference length, where the label-shift estimate is "
                      f"not trusted: not re-weighted (EM estimate {est})")
        elif covariate and excludes and covariate_auc is not None:
            reason = (f"the shift is not a label shift (domain AUC {covariate_auc[0]:.3f} on the features, "
                      f"{covariate_auc[1]:.3f} on the posteriors, {covariate_auc[2]:.3f} after re-mixing the source "
                      f"classes): the label-shift model does not hold: not re-weighted (EM estimate {est})")
        elif covariate and excludes:
            reason = (f"target is covariate-shifted ({extra['ood_fraction']:.1%} of its rows out of distribution, "
                      f"{ood_rate:.0%} expected, p = {extra['ood_p_value']:.2g}): the label-shift model does not hold: "
                      f"not re-weighted (EM estimate {est})")
        elif loses:
            reason = (f"class priors shifted ({est}, {level}) but the re-weighted labels would lower the expected MCC "
                      f"from {mcc_none:.3f} to {mcc_adapted:.3f} or fall in one class: not re-weighted")
        elif applied:
            reason = f"class priors shifted: the {level} excludes the source prior ({est}): re-weighted"
        else:
            reason = f"no supported class-prior shift: every {level} holds the source prior ({est}): not re-weighted"
        reason = f"{temperature_reason}; {reason}" if temperature_reason else reason
        return cls(classes=[str(c) for c in classes], source_priors=[float(v) for v in src],
                   target_priors=[float(v) for v in pi], n_target=int(len(proba)), lr_statistic=float(stat),
                   p_value=pv, alpha=alpha, applied=bool(applied), reason=reason, extra=extra,
                   temper_ood=float(temperature))

    def apply(self, proba: np.ndarray, ood_flags: np.ndarray | None = None) -> np.ndarray:
        """The target's temperature (``temper_ood``; 1 = none) on every row, then the re-weighting
        when it was accepted; else unchanged. ``ood_flags`` is accepted for callers that pass the
        rows' flags and does not change the result."""
        p = np.asarray(proba, dtype=np.float64)
        if self.temper_ood != 1.0 and len(p):
            p = calibrate(p, self.temper_ood)
        if self.applied:
            return reweight(p, np.asarray(self.source_priors), np.asarray(self.target_priors))
        return p

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (what ``priors.json`` and ``/v1/info`` hold)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def domain_ood(self, x: np.ndarray) -> np.ndarray | None:
        """Per-query OOD score from the domain classifier of the target sample (when
        :func:`genoray.scoring.adapt.safe_target` had labeled source rows; else ``None``): the
        share of held-out source rows whose ``P(target | x)`` is below the query's."""
        m = self.extra.get("domain_model")
        x = np.asarray(x, dtype=np.float64)
        if not m or x.ndim != 2 or x.shape[1] != len(m["coef"]):
            return None
        z = ((x - np.asarray(m["mean"])) / np.asarray(m["scale"])) @ np.asarray(m["coef"]) + m["intercept"]
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        cal = np.asarray(m["calibration"])
        return np.searchsorted(cal, p, side="left") / max(len(cal), 1)

    def report(self) -> dict[str, Any]:
        """:meth:`to_dict` without the domain classifier's arrays (what a command prints)."""
        d = self.to_dict()
        d["extra"] = {k: v for k, v in self.extra.items() if k != "domain_model"}
        return d

    def summary(self) -> dict[str, Any]:
        """The part reported with each prediction."""
        return {"applied": self.applied, "tempered": self.temper_ood != 1.0, "temperature": self.temper_ood,
                "reason": self.reason,
                "target_priors": dict(zip(self.classes, (round(v, 6) for v in self.target_priors)))}

    def save(self, out_dir: str | Path) -> None:
        """Write ``priors.json`` (signed)."""
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_signed(Path(out_dir) / FILE, {"format_version": FORMAT_VERSION, "kind": "prior_shift", **self.to_dict()})

    @classmethod
    def load(cls, path: str | Path) -> PriorShift:
        """Read ``priors.json`` written by :meth:`save`; raises ``ChecksumError`` if it was edited."""
        f = Path(path) / FILE
        payload = dict(read_signed(f))
        check_format(f, "prior-shift file", payload.pop("format_version", None), (FORMAT_VERSION,))
        if payload.pop("kind", None) != "prior_shift":
            raise ValueError(f"{f}: not a prior-shift file")
        return cls(**payload)


def exists(path: str | Path) -> bool:
    """Whether a head directory holds a target's class priors (``priors.json``)."""
    return (Path(path) / FILE).is_file()
