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
3. *the data support a prior change*: Saerens et al.'s likelihood-ratio test,
   ``2 * (log L(pi_t) - log L(pi_s))`` on the target rows, against a chi-square with ``C - 1``
   degrees of freedom at ``alpha`` (0.01 by default), so no correction is made on noise alone.

4. *the correction does not trade away the ranking*: re-weighting moves the decision threshold
   towards the estimated majority class, which raises accuracy but can lower MCC (measured:
   -0.145 on a human TATA target with non-promoters cut to 20%). Without labels, the MCC of
   the unadapted and the re-weighted labels is estimated on the target rows with the
   re-weighted posteriors as soft labels (:func:`expected_mcc`); when the re-weighted labels
   lose more than ``MCC_TOLERANCE`` (0.02), nothing is re-weighted.

When gate 1 finds the target covariate-shifted, the adaptation instead *tempers* every row of
that target: ``p ** (1 / T)`` renormalised, with ``T`` (:func:`uninformed_temperature`) chosen
so that the mean top-class probability on the target sample equals the largest source prior,
the confidence of a predictor that knows only the class mix. It keeps every predicted label
(so accuracy and MCC cannot change) but stops claiming the source's confidence on a target the
source does not cover (measured: ECE 0.12-0.44 on flagged cross-species and composition
targets, where accuracy was 0.47-0.57; tempering only the flagged rows left ECE at 0.16-0.21,
because the unflagged rows of a shifted target are no better predicted; a fixed ``T = 10``
pushed a 3-class target below its majority share, ECE 0.12 -> 0.19).

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


def uninformed_temperature(proba: np.ndarray, source_priors: np.ndarray, max_t: float = 1000.0) -> float:
    """The temperature ``T >= 1`` at which the mean top-class probability of ``p ** (1 / T)``
    (renormalised) over the rows equals the largest source prior (bisection on ``log T``; 1 when
    the rows already claim no more, ``max_t`` when even that claims more)."""

    p = np.asarray(proba, dtype=np.float64)
    goal = float(np.max(source_priors))

    def conf(t: float) -> float:
        return float(calibrate(p, t).max(axis=1).mean())

    if len(p) == 0 or conf(1.0) <= goal:
        return 1.0
    if conf(max_t) > goal:
        return max_t
    lo, hi = 0.0, float(np.log(max_t))
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if conf(float(np.exp(mid))) > goal else (lo, mid)
    return float(np.exp(hi))


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
                 length_ratio: float | None = None, ood_p_value: float | None = None) -> "PriorShift":
        """Estimate from calibrated probabilities of unlabeled target rows and decide;
        ``ood_flags``: the per-row OOD flags of the same rows (their calibrated rate ``ood_rate``);
        ``length_ratio``: target median length / reference length; ``ood_p_value``: the OOD
        scorer's own p-value for the flagged count (default: binomial at ``ood_rate``)."""
        from scipy.stats import binom, chi2

        src = np.asarray(source_priors, dtype=np.float64)
        src = src / src.sum()
        pi = em_priors(proba, src)
        stat = max(0.0, 2.0 * (log_likelihood(proba, src, pi) - log_likelihood(proba, src, src)))
        pv = float(chi2.sf(stat, max(len(src) - 1, 1)))
        est = ", ".join(f"{c}: {s:.3f} -> {t:.3f}" for c, s, t in zip(classes, src, pi))
        extra: dict[str, Any] = {}
        covariate = False
        if ood_flags is not None and len(ood_flags):
            k, n = int(np.sum(ood_flags)), len(ood_flags)
            p_ood = float(binom.sf(k - 1, n, ood_rate)) if ood_p_value is None else float(ood_p_value)
            extra = {"ood_fraction": k / n, "ood_expected": ood_rate, "ood_p_value": p_ood}
            covariate = p_ood < alpha
        other_length = length_ratio is not None and not (1 / 1.5 <= length_ratio <= 1.5)
        if length_ratio is not None:
            extra["length_ratio"] = float(length_ratio)
        mcc_none = mcc_adapted = 0.0
        if pv < alpha and not covariate and not other_length:
            adapted = reweight(proba, src, pi)
            mcc_none = expected_mcc(adapted, np.asarray(proba).argmax(axis=1))
            mcc_adapted = expected_mcc(adapted, adapted.argmax(axis=1))
            extra.update(expected_mcc_unadapted=mcc_none, expected_mcc_reweighted=mcc_adapted)
        loses = mcc_adapted < mcc_none - MCC_TOLERANCE
        applied = pv < alpha and not covariate and not other_length and not loses
        temper = uninformed_temperature(proba, src) if covariate else 1.0
        if other_length and not covariate:
            reason = (f"target rows are {length_ratio:.2f}x the reference length, where the source calibration does "
                      f"not hold: probabilities unchanged (EM estimate {est}, likelihood-ratio p = {pv:.2g})")
        elif covariate:
            reason = (f"target is covariate-shifted ({extra['ood_fraction']:.1%} of its rows out of distribution, "
                      f"{ood_rate:.0%} expected, p = {extra['ood_p_value']:.2g}): the label-shift model does not hold: "
                      f"not re-weighted (EM estimate {est}); every row tempered (T = {temper:.3g}, mean top-class "
                      f"probability to the largest source prior {np.max(src):.3f}), labels kept")
        elif loses:
            reason = (f"class priors shifted ({est}; likelihood-ratio p = {pv:.2g}) but the re-weighted labels would "
                      f"lower the expected MCC from {mcc_none:.3f} to {mcc_adapted:.3f}: probabilities unchanged")
        elif applied:
            reason = f"class priors shifted ({est}); likelihood-ratio test p = {pv:.2g} < {alpha}: re-weighted"
        else:
            reason = (f"no significant class-prior shift ({est}); likelihood-ratio test p = {pv:.2g} >= {alpha}: "
                      "probabilities unchanged")
        return cls(classes=[str(c) for c in classes], source_priors=[float(v) for v in src],
                   target_priors=[float(v) for v in pi], n_target=int(len(proba)), lr_statistic=float(stat),
                   p_value=pv, alpha=alpha, applied=bool(applied), reason=reason, extra=extra,
                   temper_ood=temper)

    def apply(self, proba: np.ndarray, ood_flags: np.ndarray | None = None) -> np.ndarray:
        """Re-weighted probabilities when the correction was accepted; for a covariate-shifted
        target, every row tempered (labels kept); else unchanged. ``ood_flags`` is accepted for
        callers that pass the rows' flags and no longer changes the result."""
        p = np.asarray(proba, dtype=np.float64)
        if self.applied:
            return reweight(p, np.asarray(self.source_priors), np.asarray(self.target_priors))
        if self.temper_ood != 1.0 and len(p):
            return calibrate(p, self.temper_ood)
        return p

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (what ``priors.json`` and ``/v1/info`` hold)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

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
