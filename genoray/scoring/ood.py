"""Per-query out-of-distribution score, calibrated on held-out reference rows at the query's length.

:class:`OODScorer` is fitted on a bounded sample of reference (training) embeddings:

* **raw score** (``method="mahalanobis"``, the default, chosen by ``bench/bench_shift.py``):
  the smallest class-conditional Mahalanobis distance of the query to the reference class
  means, in a whitened space (the first 4, 16 and 64 principal components, each with a
  Ledoit-Wolf shrinkage estimate of the pooled within-class covariance); each distance is
  ranked against held-out rows, as is (when fitted with sequences) the per-base negative
  log-likelihood under an order-5 Markov chain of the reference sequences and that NLL minus
  the entropy of the query's own base composition (a complexity-corrected likelihood, which
  sees composition shifts the raw likelihood scores as typical); the largest rank (or their
  Fisher combination, ``combine="fisher"``) is the raw score (far in feature space, or
  improbable as DNA of the reference kind). ``method="knn"``: cosine
  distance to the ``k``-th nearest reference row (the older score, kept for comparison).
* **length matching**: the feature vector of a short sequence is noisier (k-mer frequencies
  from fewer k-mers), which made the older score follow length rather than content. When the
  reference *sequences* and the encoder are given to :meth:`OODScorer.fit`, the whitened
  space (or kNN reference) and its calibration are fitted again on the reference rows cropped
  to each length of a geometric grid, and a query is scored in the space of (nearly) its own
  length; a query longer than the reference is scored on its centre window of the reference
  length (:meth:`OODScorer.score_sequences`).
* **calibration**: reference rows held out of the fit are scored the same way, so an
  in-domain query exceeds the threshold at the stated ``rate`` (5% by default).

``score`` is the fraction of the length-matched calibration rows whose raw score is below the
query's (0 = typical, 1 = beyond every calibration row); ``flag`` is ``score > 1 - rate``.
The fitted object is saved as ``ood.json`` + ``ood.npz`` with sha256 checksums (no pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from genoray.config import OODConfig
from genoray.encoders.kmer import encode_batch, kmer_indices
from genoray.infra.artifacts import read_npz, read_signed, sha256_file, write_npz, write_signed
from genoray.infra.documents import from_json, record, to_json
from genoray.infra.errors import ChecksumError
from genoray.sequences.lengths import crop, length_grid

MANIFEST = "ood.json"
ARRAYS = "ood.npz"
MIN_REFERENCE_ROWS = 20  # the fewest rows an OOD reference (and so a head) is fitted on


@record
class OODManifest:
    """The payload of ``ood.json``: the scorer's settings and sizes, and the sha256 of ``ood.npz``."""

    KIND: ClassVar[str] = "OOD scorer"
    FORMAT_VERSION: ClassVar[int] = 1
    format_version: int
    kind: str
    config: OODConfig
    dim: int
    n_reference: int
    n_fit: int
    n_cal: int
    reference_length: int
    npz_sha256: str


class OODScorer:
    """Fit on reference embeddings; score new ones (see the module docstring)."""

    def __init__(self, cfg: OODConfig | None = None):
        self.cfg = cfg or OODConfig()

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, vectors: np.ndarray, labels: Sequence | None = None, sequences: Sequence[str] | None = None,
            encoder=None) -> "OODScorer":
        """Fit on reference rows; ``labels`` make the Mahalanobis score class-conditional;
        ``sequences`` (aligned with ``vectors``) plus ``encoder`` enable length matching: the
        whitened space (or kNN reference) and the calibration are then fitted again on the
        reference rows cropped to each length of a geometric grid."""
        cfg = self.cfg
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) < MIN_REFERENCE_ROWS:
            raise ValueError(f"OOD scorer needs at least {MIN_REFERENCE_ROWS} reference rows (2-D), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("OOD reference vectors contain NaN or infinity")
        if sequences is not None and len(sequences) != len(x):
            raise ValueError(f"{len(sequences)} sequences for {len(x)} reference vectors")
        y = np.zeros(len(x), dtype=object) if labels is None else np.asarray(labels, dtype=object)
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(x))
        n_cal = min(cfg.max_cal_rows, max(len(x) // 4, 10))
        cal, fit = np.sort(order[:n_cal]), np.sort(order[n_cal : n_cal + cfg.max_fit_rows])
        self.n_reference_, self.n_fit_, self.n_cal_ = len(x), len(fit), len(cal)
        self.dim_ = x.shape[1]
        self.spaces_, lengths = [], []
        self.markov_ = np.zeros(0)
        cal_seqs = None
        if sequences is not None and encoder is not None:
            if cfg.markov_order > 0:
                self.markov_ = markov_fit([str(sequences[i]) for i in fit], cfg.markov_order)
            cal_seqs = [str(sequences[i]) for i in cal]
            self.reference_length_ = int(np.median([len(sequences[i]) for i in cal]))
            crng = np.random.default_rng(cfg.seed + 1)
            for length in length_grid(self.reference_length_, cfg.min_length, cfg.length_ratio):
                xf = np.asarray(encoder.embed(crop([str(sequences[i]) for i in fit], length, crng)), dtype=np.float32)
                sc = crop(cal_seqs, length, crng)
                xc = np.asarray(encoder.embed(sc), dtype=np.float32)
                self.spaces_.append(self._fit_space(xf, y[fit], xc, sc))
                lengths.append(length)
        else:
            self.reference_length_ = 0
        self.spaces_.append(self._fit_space(x[fit], y[fit], x[cal], cal_seqs))  # at or above the reference length
        lengths.append(np.iinfo(np.int32).max)
        self.cal_lengths_ = np.asarray(lengths, dtype=np.int64)
        return self

    def _fit_space(self, x: np.ndarray, y: np.ndarray, cal: np.ndarray, cal_seqs=None) -> dict[str, np.ndarray]:
        from sklearn.covariance import LedoitWolf

        cfg = self.cfg
        sp: dict[str, np.ndarray] = {"mean": x.mean(axis=0).astype(np.float64)}
        if cfg.method == "knn":
            sp["reference"] = x.astype(np.float32)
        else:
            xc = x.astype(np.float64) - sp["mean"]
            evals, evecs = np.linalg.eigh(xc.T @ xc)  # (dim x dim): cheaper than an SVD of the rows
            vt = evecs[:, np.argsort(evals)[::-1]].T
            dims = sorted({min(d, vt.shape[0], len(x) - 1) for d in cfg.pca_dims})
            sp["components"] = vt[: dims[-1]]
            z = xc @ sp["components"].T
            ys = np.array([str(v) for v in y])
            classes = sorted(set(ys))
            means = np.stack([z[ys == c].mean(axis=0) for c in classes])
            sp["class_means"] = means
            within = z - means[np.searchsorted(classes, ys)]
            sp["dims"] = np.asarray(dims, dtype=np.int64)
            for d in dims:
                sp[f"precision{d}"] = LedoitWolf(assume_centered=True).fit(within[:, :d]).precision_
                sp[f"cal{d}"] = np.sort(self._mahalanobis(sp, cal, d))
        if len(self.markov_) and cal_seqs is not None:
            nll = markov_nll(self.markov_, cal_seqs, self.cfg.markov_order)
            sp["calmarkov"] = np.sort(nll)
            if self.cfg.complexity_view:
                sp["calcomplexity"] = np.sort(nll - base_entropy(cal_seqs))
        sp["cal_scores"] = np.sort(self._raw(sp, cal, cal_seqs))
        return sp

    # ---- scoring -------------------------------------------------------------------------
    def _raw(self, sp: dict[str, Any], x: np.ndarray, seqs=None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.cfg.method == "knn":
            import faiss

            ref = sp["reference"]
            if "_index" not in sp:
                index = faiss.IndexFlatIP(ref.shape[1])
                r = ref / np.clip(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12, None)
                index.add(np.ascontiguousarray(r, dtype=np.float32))
                sp["_index"] = index
            q = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
            k = min(self.cfg.k, len(ref))
            sims, _ = sp["_index"].search(np.ascontiguousarray(q, dtype=np.float32), k)
            return 1.0 - sims[:, -1].astype(np.float64)
        views = [(sp[f"cal{d}"], self._mahalanobis(sp, x, int(d))) for d in sp["dims"]]
        if "calmarkov" in sp:
            if seqs is None:
                raise ValueError("this OOD scorer was fitted with sequences: score with score_sequences()")
            nll = markov_nll(self.markov_, seqs, self.cfg.markov_order)
            views.append((sp["calmarkov"], nll))
            if "calcomplexity" in sp:
                views.append((sp["calcomplexity"], nll - base_entropy(seqs)))
        below = [np.searchsorted(cal, v, side="left") for cal, v in views]
        if self.cfg.combine == "fisher":  # upper-tail p-value of each view, (above + 1) / (n + 1)
            return -2.0 * np.sum([np.log((len(cal) - b + 1.0) / (len(cal) + 1.0)) for (cal, _), b in zip(views, below)],
                                 axis=0)
        return np.max([b / len(cal) for (cal, _), b in zip(views, below)], axis=0)

    @staticmethod
    def _mahalanobis(sp: dict[str, np.ndarray], x: np.ndarray, dim: int) -> np.ndarray:
        """Smallest class-conditional Mahalanobis distance on the first ``dim`` components."""
        z = (np.asarray(x, dtype=np.float64) - sp["mean"]) @ sp["components"][:dim].T
        prec = sp[f"precision{dim}"]
        best = np.full(len(z), np.inf)
        for m in sp["class_means"]:
            d = z - m[:dim]
            best = np.minimum(best, np.einsum("ij,jk,ik->i", d, prec, d))
        return np.sqrt(np.maximum(best, 0.0))

    def raw(self, vectors: np.ndarray, lengths: Sequence[int] | np.ndarray | None = None, seqs=None) -> np.ndarray:
        """Uncalibrated distance of each row from the (length-matched) reference; larger = more unusual."""
        return self._per_space(vectors, lengths, seqs, lambda sp, raw: raw)

    def _per_space(self, vectors, lengths, seqs, finish) -> np.ndarray:
        """Score each row in the reference space matched to its length: ``finish(space, raw)``
        turns the raw distances of the rows of one space into the returned values."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim_:
            raise ValueError(f"expected vectors of dimension {self.dim_}, got shape {x.shape}")
        rows = self._table(lengths, len(x))
        out = np.empty(len(x))
        for t in np.unique(rows):
            m = rows == t
            sm = None if seqs is None else [seqs[i] for i in np.flatnonzero(m)]
            out[m] = finish(self.spaces_[t], self._raw(self.spaces_[t], x[m], sm))
        return out

    def _table(self, lengths: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
        out = np.full(n, len(self.spaces_) - 1)
        if lengths is None or self.reference_length_ == 0 or len(self.spaces_) == 1:
            return out
        lens = np.asarray(lengths, dtype=np.float64)
        grid = np.log(self.cal_lengths_[:-1].astype(np.float64))
        short = lens < self.reference_length_ / self.cfg.length_ratio ** 0.5
        if short.any():
            ll = np.log(np.maximum(lens[short], 1.0))
            out[short] = np.argmin(np.abs(ll[:, None] - grid[None, :]), axis=1)
        return out

    def score(self, vectors: np.ndarray, lengths: Sequence[int] | np.ndarray | None = None, seqs=None) -> np.ndarray:
        """Calibrated score in [0, 1]: fraction of length-matched calibration rows whose raw
        score is below the query's (``lengths``: the queries' lengths; without them, or for
        queries at least as long as the reference, the full-length space is used)."""
        return self._per_space(vectors, lengths, seqs, lambda sp, raw: np.searchsorted(
            sp["cal_scores"], raw, side="left") / len(sp["cal_scores"]))

    def score_sequences(self, sequences: Sequence[str], encoder, vectors: np.ndarray | None = None) -> np.ndarray:
        """Calibrated scores for raw sequences. Sequences longer than the reference are scored
        on their centre window of the reference length (a longer sequence's features are less
        noisy, so scoring it whole would look *more* typical than any reference row); shorter
        ones in the space fitted on reference rows cropped to their length. ``vectors``: their
        full-length embeddings when already computed."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        x = np.asarray(encoder.embed(list(sequences)) if vectors is None else vectors, dtype=np.float32)
        ref = self.reference_length_
        long = lengths > ref * self.cfg.length_ratio ** 0.5 if ref else np.zeros(len(lengths), dtype=bool)
        seqs = [str(q) for q in sequences]
        if long.any():
            x = x.copy()
            win = []
            for i in np.flatnonzero(long):
                start = (int(lengths[i]) - ref) // 2
                seqs[i] = seqs[i][start : start + ref]
                win.append(seqs[i])
            x[long] = np.asarray(encoder.embed(win), dtype=np.float32)
            lengths = np.where(long, ref, lengths)
        return self.score(x, lengths, seqs)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """``True`` where a calibrated score is beyond the ``1 - rate`` quantile."""
        return np.asarray(scores) > 1.0 - self.cfg.rate

    def flagged_p_value(self, k: int, m: int) -> float:
        """One-sided p-value of ``k`` of ``m`` exchangeable in-domain rows being flagged. The
        threshold is an order statistic of ``n`` calibration rows, so the exceedance probability
        is Beta(n - j + 1, j) distributed and the count beta-binomial (a binomial at ``rate``
        ignores the threshold's own noise and was measured to flag random halves at 15%)."""
        from scipy.stats import betabinom

        n = len(self.spaces_[-1]["cal_scores"])
        j = int(np.floor((1.0 - self.cfg.rate) * n)) + 1
        return float(betabinom.sf(k - 1, m, max(n - j + 1, 1), j))

    def threshold(self) -> float:
        """Raw-score threshold at the reference length (for reports)."""
        return float(np.quantile(self.spaces_[-1]["cal_scores"], 1.0 - self.cfg.rate))

    def describe(self) -> dict[str, Any]:
        """Threshold and calibration facts (served by ``/v1/info``)."""
        return {"method": self.cfg.method, "rate": self.cfg.rate, "threshold_raw": round(self.threshold(), 6),
                "flag_if_score_above": 1.0 - self.cfg.rate, "n_reference": int(self.n_reference_),
                "n_fit": int(self.n_fit_), "n_calibration": int(self.n_cal_),
                "length_matched": bool(self.reference_length_), "reference_length": int(self.reference_length_),
                "calibration_lengths": [int(v) for v in self.cal_lengths_[:-1]]}

    # ---- persistence ---------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """Write ``ood.json`` (signed) + ``ood.npz`` (its sha256 in the JSON)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {f"s{i}_{k}": v for i, sp in enumerate(self.spaces_) for k, v in sp.items() if not k.startswith("_")}
        write_npz(out / ARRAYS, cal_lengths=self.cal_lengths_, markov=self.markov_, **arrays)
        doc = OODManifest(format_version=OODManifest.FORMAT_VERSION, kind="ood", config=self.cfg, dim=int(self.dim_),
                          n_reference=int(self.n_reference_), n_fit=int(self.n_fit_), n_cal=int(self.n_cal_),
                          reference_length=int(self.reference_length_), npz_sha256=sha256_file(out / ARRAYS))
        write_signed(out / MANIFEST, to_json(doc))

    @classmethod
    def load(cls, path: str | Path) -> OODScorer:
        """Load and verify a saved scorer."""
        path = Path(path)
        doc = from_json(OODManifest, read_signed(path / MANIFEST), path / MANIFEST)
        if doc.kind != "ood":
            raise ValueError(f"{path / MANIFEST}: not an OOD scorer (kind {doc.kind!r})")
        if sha256_file(path / ARRAYS) != doc.npz_sha256:
            raise ChecksumError(f"{path / ARRAYS}: sha256 does not match {MANIFEST}")
        a = read_npz(path / ARRAYS)
        self = cls(doc.config)
        self.cal_lengths_, self.markov_ = a["cal_lengths"], a["markov"]
        self.spaces_ = [{} for _ in range(len(self.cal_lengths_))]
        for name, v in a.items():
            if name.startswith("s") and "_" in name:
                i, key = name[1:].split("_", 1)
                self.spaces_[int(i)][key] = v
        self.dim_ = doc.dim
        self.n_reference_, self.n_fit_, self.n_cal_ = doc.n_reference, doc.n_fit, doc.n_cal
        self.reference_length_ = doc.reference_length
        return self


def markov_fit(sequences: Sequence[str], order: int) -> np.ndarray:
    """Log transition probabilities ``log p(base | previous order bases)`` (add-one smoothed),
    flattened over the ``4**(order+1)`` (order+1)-mers; k-mers with N are skipped."""

    counts = np.ones(4 ** (order + 1))
    for s in sequences:
        idx, valid = kmer_indices(encode_batch([s])[0], order + 1)
        counts += np.bincount(idx[valid], minlength=len(counts))
    c = counts.reshape(-1, 4)
    return np.log(c / c.sum(axis=1, keepdims=True)).reshape(-1)


def base_entropy(sequences: Sequence[str]) -> np.ndarray:
    """Entropy (nats) of each sequence's own base composition (add-half smoothed): the
    per-base code length a sequence needs on its own, subtracted from the Markov NLL for the
    complexity-corrected view (Serra et al., ICLR 2020: a likelihood alone ranks simple inputs
    as typical whatever their source)."""
    out = np.zeros(len(sequences))
    for i, s in enumerate(sequences):
        c = np.array([s.count(b) for b in "ACGT"], dtype=np.float64) + 0.5
        p = c / c.sum()
        out[i] = -float(np.sum(p * np.log(p)))
    return out


def markov_nll(logp: np.ndarray, sequences: Sequence[str], order: int) -> np.ndarray:
    """Per-base negative log-likelihood of each sequence under :func:`markov_fit`'s chain
    (0 for a sequence with no valid (order+1)-mer)."""

    out = np.zeros(len(sequences))
    for i, s in enumerate(sequences):
        idx, valid = kmer_indices(encode_batch([s])[0], order + 1)
        if valid.any():
            out[i] = -float(np.mean(logp[idx[valid]]))
    return out


def exists(path: str | Path) -> bool:
    """Whether a saved OOD scorer is in ``path``."""
    return (Path(path) / MANIFEST).is_file()
