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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genoray.infra.artifacts import read_npz, read_signed, sha256_file, write_npz, write_signed
from genoray.infra.errors import ChecksumError

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
