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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genoray.artifacts import ChecksumError, read_json, read_npz, sha256_file, sha256_json, write_json, write_npz

FORMAT_VERSION = 1


@dataclass(frozen=True)
class OODConfig:
    """Attributes:
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
        length_ratio: ratio between consecutive calibration lengths (length-matched mode).
        min_length: shortest calibration length.
        seed: subsampling and cropping seed.
        complexity_view: one more ranked view (with sequences): the Markov NLL minus the
            entropy of the query's own base composition (complexity-corrected likelihood).
        combine: how the per-view ranks become one raw score: ``max`` (the largest rank) or
            ``fisher`` (``-2 sum log p`` of the views' upper-tail p-values); either is then
            calibrated on the held-out rows, so the flag rate holds for both.
    """

    method: str = "mahalanobis"
    rate: float = 0.05
    max_fit_rows: int = 4000
    max_cal_rows: int = 1000
    pca_dims: tuple[int, ...] = (4, 16, 64)
    k: int = 10
    markov_order: int = 5
    length_ratio: float = 1.25
    min_length: int = 16
    seed: int = 0
    combine: str = "max"
    complexity_view: bool = True

    def __post_init__(self):
        if self.method not in ("mahalanobis", "knn"):
            raise ValueError(f"OOD method must be 'mahalanobis' or 'knn', got {self.method!r}")
        if not 0 < self.rate < 0.5:
            raise ValueError(f"OOD rate must be in (0, 0.5), got {self.rate}")
        if self.combine not in ("max", "fisher"):
            raise ValueError(f"OOD combine must be 'max' or 'fisher', got {self.combine!r}")


def crop(sequences: Sequence[str], length: int, rng: np.random.Generator) -> list[str]:
    """A random window of ``length`` bp from each sequence (shorter ones unchanged)."""
    out = []
    for s in sequences:
        if len(s) <= length:
            out.append(s)
        else:
            i = int(rng.integers(0, len(s) - length + 1))
            out.append(s[i : i + length])
    return out


def length_grid(reference_length: int, min_length: int = 16, ratio: float = 1.25) -> list[int]:
    """The calibration lengths below ``reference_length``: geometric from ``min_length`` by
    ``ratio``, up to (not including) ``reference_length / sqrt(ratio)``, where the reference
    length itself takes over (also the grid of :mod:`genoray.heads.length_calibration`)."""
    g, grid = float(min_length), []
    while g < reference_length / ratio ** 0.5:
        grid.append(int(round(g)))
        g *= ratio
    return sorted(set(grid))


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
        if x.ndim != 2 or len(x) < 20:
            raise ValueError(f"OOD scorer needs at least 20 reference rows (2-D), got shape {x.shape}")
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
        """Write ``ood.json`` + ``ood.npz`` (sha256 of the npz and of the JSON payload)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {f"s{i}_{k}": v for i, sp in enumerate(self.spaces_) for k, v in sp.items() if not k.startswith("_")}
        write_npz(out / "ood.npz", cal_lengths=self.cal_lengths_, markov=self.markov_, **arrays)
        payload = {"format_version": FORMAT_VERSION, "kind": "ood", "config": asdict(self.cfg), "dim": int(self.dim_),
                   "n_reference": int(self.n_reference_), "n_fit": int(self.n_fit_), "n_cal": int(self.n_cal_),
                   "reference_length": int(self.reference_length_), "npz_sha256": sha256_file(out / "ood.npz")}
        write_json(out / "ood.json", {"payload": payload, "sha256": sha256_json(payload)})

    @classmethod
    def load(cls, path: str | Path) -> "OODScorer":
        """Load and verify a saved scorer."""
        path = Path(path)
        doc = read_json(path / "ood.json")
        payload = doc.get("payload", {})
        if sha256_json(payload) != doc.get("sha256"):
            raise ChecksumError(f"{path / 'ood.json'}: payload sha256 does not match (edited or corrupt)")
        if payload.get("kind") != "ood" or payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path / 'ood.json'}: unsupported OOD scorer {payload.get('kind')} v{payload.get('format_version')}")
        if sha256_file(path / "ood.npz") != payload["npz_sha256"]:
            raise ChecksumError(f"{path / 'ood.npz'}: sha256 does not match ood.json")
        a = read_npz(path / "ood.npz")
        self = cls(OODConfig(**payload["config"]))
        self.cal_lengths_, self.markov_ = a["cal_lengths"], a["markov"]
        self.spaces_ = [{} for _ in range(len(self.cal_lengths_))]
        for name, v in a.items():
            if name.startswith("s") and "_" in name:
                i, key = name[1:].split("_", 1)
                self.spaces_[int(i)][key] = v
        self.dim_ = payload["dim"]
        self.n_reference_, self.n_fit_, self.n_cal_ = payload["n_reference"], payload["n_fit"], payload["n_cal"]
        self.reference_length_ = payload["reference_length"]
        return self


def markov_fit(sequences: Sequence[str], order: int) -> np.ndarray:
    """Log transition probabilities ``log p(base | previous order bases)`` (add-one smoothed),
    flattened over the ``4**(order+1)`` (order+1)-mers; k-mers with N are skipped."""
    from genoray.encoders.kmer import encode_batch, kmer_indices

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
    from genoray.encoders.kmer import encode_batch, kmer_indices

    out = np.zeros(len(sequences))
    for i, s in enumerate(sequences):
        idx, valid = kmer_indices(encode_batch([s])[0], order + 1)
        if valid.any():
            out[i] = -float(np.mean(logp[idx[valid]]))
    return out


def exists(path: str | Path) -> bool:
    """Whether a saved OOD scorer is in ``path``."""
    return (Path(path) / "ood.json").is_file()


def store_sequences(store, ids) -> list[str] | None:
    """The sequences of rows ``ids`` of an :class:`~genoray.store.EmbeddingStore`, re-read from
    its source files (cleaned as when embedded); ``None`` when a source is gone or lacks an id."""
    records = store.source_records(ids)
    if records is None:
        return None
    by_id = {sid: seq for sid, (seq, _meta) in records.items()}
    found = [by_id[str(i)] for i in ids if str(i) in by_id]
    return found if len(found) == len(ids) else None


def fit_on_store(store, emb, cfg: OODConfig | None = None, encoder=None) -> OODScorer:
    """Fit a scorer on the rows ``emb`` of an :class:`~genoray.store.EmbeddingStore`. The
    sequences for length matching are re-read from the store's source files (by id); when a
    source is gone, the scorer is calibrated at the reference length only. ``encoder``: a
    zero-argument factory of the store's encoder (default: built from its spec), called only
    when the sequences were read."""
    from genoray.encoders import encoder_from_spec

    cfg = cfg or OODConfig()
    encoder = encoder or (lambda: encoder_from_spec(store.encoder_spec))
    keep = np.arange(len(emb.ids))
    cap = cfg.max_fit_rows + cfg.max_cal_rows
    if len(keep) > cap:  # the scorer never uses more rows: read and hold only these
        keep = np.sort(np.random.default_rng(cfg.seed + 2).choice(len(keep), size=cap, replace=False))
    seqs = store_sequences(store, emb.ids[keep])
    scorer = OODScorer(cfg).fit(emb.vectors[keep], emb.labels[keep], seqs, encoder() if seqs is not None else None)
    scorer.n_reference_ = len(emb.ids)
    return scorer
