"""``Predictor``: encoder + index + fused head -> one :class:`Prediction` per sequence.

Plain Python (no Ray): the same object runs in a notebook, a batch job or a Serve replica.
Each prediction carries the label, calibrated class probabilities, the k neighbours used as
evidence (seq_id, label, cosine similarity) and an out-of-distribution score in [0, 1]: the
fraction of training sequences whose k-th neighbour is closer than this query's (values near 1
mean the query is farther from the reference data than almost all of it; with an
:class:`~genoray.scoring.ood.OODScorer` its length-matched score; after ``adapt_to`` with
labeled source rows, the target sample's domain-classifier score, which measured closer to the
supervised ceiling on the shared data's pairs, see docs/shift.md).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genoray.bundle import BundleManifest, current_version, verify_bundle, version_dir
from genoray.bundle.manifest import HEAD_DIR, INDEX_DIR
from genoray.config import CleanPolicy, TargetConfig
from genoray.encoders import Encoder, encoder_from_spec, fingerprint
from genoray.heads import FusedHead, drop_own, length_calibration, load_head
from genoray.heads.persist import MANIFEST as HEAD_MANIFEST
from genoray.index import MANIFEST as INDEX_MANIFEST
from genoray.index import VectorIndex, read_manifest
from genoray.infra import fs
from genoray.scoring import ood, priors
from genoray.scoring.adapt import safe_target
from genoray.sequences.clean import Cleaner

log = logging.getLogger(__name__)


def serving_policy(clean: CleanPolicy | None) -> CleanPolicy:
    """The policy queries are cleaned with: the store's (the default when it recorded none),
    except that a record longer than ``max_length`` is rejected (``too_long``), because one
    query gives one prediction and is never cut into windows."""
    return dataclasses.replace(clean or CleanPolicy(), long_records="reject")


@dataclass(frozen=True)
class Neighbour:
    """One neighbour used as evidence: its id, label and cosine similarity to the query."""

    seq_id: str
    label: str
    similarity: float


@dataclass(frozen=True)
class Prediction:
    """Label, class probabilities, neighbours and OOD score of one query."""

    label: str
    probabilities: dict[str, float]
    neighbours: list[Neighbour]
    ood_score: float
    seq_id: str | None = None
    ood: bool = False
    adaptation: dict[str, Any] | None = None
    contributions: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the HTTP API returns per sequence); ``contributions`` only when asked for."""
        d = asdict(self)
        if d["contributions"] is None:
            del d["contributions"]
        return d


@dataclass(frozen=True)
class Hits:
    """Nearest neighbours of a batch of queries, each array ``(n, k)``: cosine similarity
    (``-inf`` where none), global id (``-1`` where none), seq_id and label."""

    sims: np.ndarray
    gids: np.ndarray
    seq_ids: np.ndarray
    labels: np.ndarray


SearchFn = Callable[[np.ndarray, int], Hits]
"""``search(vectors, k) -> Hits``: where the neighbours come from (the local index, or the
shard groups of :mod:`genoray.serving.scatter`)."""


class Predictor:
    """Predict labels with evidence. Build with :meth:`load` from saved index and head dirs.

    Queries are cleaned with the store's :class:`~genoray.config.CleanPolicy` (recorded in the
    store and carried by the index manifest; see :func:`serving_policy`), so a query is cleaned
    exactly as the reference sequences were. ``index=None`` (``load(..., with_index=False)``)
    makes a predictor without the vectors, for a caller that passes ``search`` to
    :meth:`predict` (a scatter-gather model replica).
    """

    def __init__(self, encoder: Encoder, index: VectorIndex | None, head: FusedHead, clean: CleanPolicy | None = None,
                 ood=None, priors=None):
        dim = index.dim if index is not None else head.n_features_in_
        if dim != encoder.dim or head.n_features_in_ != encoder.dim:
            raise ValueError(f"dimension mismatch: encoder {encoder.dim}, index {dim}, head {head.n_features_in_}")
        self.encoder, self.index = encoder, index
        self.head = head.attach_index(index) if index is not None else head
        self.policy = serving_policy(clean)
        self.cleaner = Cleaner(self.policy)
        self.ood, self.priors = ood, priors  # genoray.scoring.ood.OODScorer, genoray.scoring.priors.PriorShift (optional)

    @classmethod
    def load(cls, index_dir: str | Path, head_dir: str | Path, with_index: bool = True, mmap: bool = False,
             verify_index: bool = True, trust_remote_code: bool = False) -> Predictor:
        """Load a verified index and head; queries are cleaned with the policy the index records.
        ``with_index=False`` reads only the index manifest (encoder, cleaning policy), not the
        vectors: :meth:`predict` then needs a ``search``. ``mmap``: memory-map the index files and
        id tables; ``verify_index=False`` when the caller verified the index files (a bundle) just
        before. ``s3://`` / ``gs://`` directories are loaded from a node-local copy
        (:func:`genoray.infra.fs.local_copy`). ``trust_remote_code``: the command's decision to
        run a transformers model's own code (``--trust-remote-code``); the index's recorded
        encoder spec never enables it."""

        index_dir = fs.local_copy(index_dir, "indexes", INDEX_MANIFEST)
        head_dir = fs.local_copy(head_dir, "heads", HEAD_MANIFEST)
        index = VectorIndex.load(index_dir, mmap=mmap, verify=verify_index) if with_index else None
        manifest = index.manifest if index is not None else read_manifest(index_dir)
        if manifest.encoder is None:
            raise ValueError(f"{index_dir}: the index manifest records no encoder")
        encoder = encoder_from_spec(manifest.encoder, trust_remote_code)
        fp = fingerprint(encoder)
        if fp != manifest.fingerprint:
            raise ValueError(f"{index_dir}: encoder fingerprint {fp} != manifest {manifest.fingerprint}")
        clean = manifest.clean
        if clean is None:
            log.warning("%s: the index records no CleanPolicy (built from an older store); "
                        "cleaning queries with the default policy", index_dir)

        ood_scorer = ood.OODScorer.load(head_dir) if ood.exists(head_dir) else None
        prior_shift = priors.PriorShift.load(head_dir) if priors.exists(head_dir) else None
        return cls(encoder, index, load_head(head_dir, encoder_fingerprint=fp), clean=clean,
                   ood=ood_scorer, priors=prior_shift)

    @classmethod
    def from_bundle(cls, root: str | Path, version: str | None = None, mmap: bool = False, cached: bool = True,
                    with_index: bool = True, trust_remote_code: bool = False) -> tuple[Predictor, BundleManifest]:
        """Verify and load a published bundle version (default: ``CURRENT``); returns the
        predictor and the version's ``bundle.json``.

        ``mmap``: memory-map the index files and id tables (shared page cache) instead of reading
        them into this process. ``cached``: files this node verified before, unchanged in size and
        mtime, are not hashed again (:func:`genoray.bundle.verify_bundle`). A remote root's
        version is first copied into the node-local cache (once per node), then loaded from
        there. ``with_index=False``: the encoder, head and scorers only (see :meth:`load`)."""
        version = version or current_version(root)
        if version is None:
            raise FileNotFoundError(f"{root}: no CURRENT bundle has been published")
        doc = verify_bundle(root, version, cached=cached)
        vdir = version_dir(root, version)  # every index file was just verified as part of the bundle
        return cls.load(vdir / INDEX_DIR, vdir / HEAD_DIR, with_index=with_index, mmap=mmap, verify_index=False,
                        trust_remote_code=trust_remote_code), doc

    def source_priors(self) -> np.ndarray:
        """Class frequencies of the reference (index) rows, in the head's class order."""
        if self.index is None:
            raise ValueError("this predictor was loaded without its index")
        labels = [str(v) for v in self.index.labels]
        return np.array([labels.count(str(c)) for c in self.head.classes_], dtype=np.float64) / max(len(labels), 1)

    def adapt_to(self, target_sequences: list[str], alpha: float | None = None, source: tuple | None = None,
                 cfg: TargetConfig | None = None):
        """Decide how later predictions adapt to a target from its unlabeled sequences, by the
        safe rule of :func:`genoray.scoring.adapt.safe_target`: an importance-weighted temperature
        when ``source`` = ``(sequences, labels[, ids])`` gives labeled source rows (ids: those
        rows' index ids, so they do not vote for themselves) and the rule supports it; label-shift
        re-weighting when the bootstrap interval of the target priors excludes the source prior;
        else nothing. ``alpha`` overrides ``cfg.alpha``. Returns the
        :class:`genoray.scoring.priors.PriorShift` (also kept as ``self.priors``)."""

        cfg = cfg or TargetConfig()
        cfg = dataclasses.replace(cfg, alpha=alpha) if alpha is not None else cfg
        if len(target_sequences) < 10:
            raise ValueError(f"a target sample needs at least 10 sequences, got {len(target_sequences)}")
        seqs = self.clean(list(target_sequences))
        x = self.encoder.embed(seqs)
        proba = length_calibration.apply(self.head, self.predict_vectors(x)[0], [len(s) for s in seqs])
        gates: dict[str, Any] = {}
        if self.ood is not None:
            flags = self.ood.flag(self.ood.score_sequences(seqs, self.encoder, x))
            gates = {"ood_flags": flags, "ood_rate": self.ood.cfg.rate,
                     "ood_p_value": self.ood.flagged_p_value(int(flags.sum()), len(flags))}
            if self.ood.reference_length_:
                gates["length_ratio"] = float(np.median([len(s) for s in seqs])) / self.ood.reference_length_
        p_val = codes = x_val = None
        if source is not None:
            s_seqs, s_labels = self.clean(list(source[0])), np.asarray(source[1], dtype=object).astype(str)
            known = np.isin(s_labels, self.head.classes_.astype(str))
            x_val = self.encoder.embed([q for q, k in zip(s_seqs, known) if k])
            s_ids = None if len(source) < 3 or source[2] is None else [i for i, k in zip(source[2], known) if k]
            p_val = self.predict_vectors(x_val, s_ids)[0]
            code_of = {str(c): i for i, c in enumerate(self.head.classes_)}
            codes = np.array([code_of[v] for v in s_labels[known]], dtype=np.int64)
        self.priors = safe_target(p_val if p_val is not None else np.zeros((0, len(self.head.classes_))),
                                  codes if codes is not None else np.zeros(0, dtype=np.int64), x_val, proba, x,
                                  self.head.classes_, self.source_priors(), cfg, **gates)
        return self.priors

    def clean(self, sequences: list[str]) -> list[str]:
        """Clean raw sequences with :attr:`policy`; raises
        :class:`~genoray.sequences.clean.InvalidSequence` (a ``ValueError``) at the first rejected one."""
        return self.cleaner.clean_all(sequences)

    def predict(self, sequences: list[str], ids: list[str] | None = None, k: int | None = None,
                cleaned: bool = False, contributions: int = 0, search: SearchFn | None = None) -> list[Prediction]:
        """Predict for raw sequences (cleaned with the predictor's policy).

        Args:
            sequences: DNA sequences.
            ids: optional ids; a query whose id is in the index does not vote for itself.
            k: neighbours to return as evidence (default: the head's k).
            cleaned: the sequences are already the output of :meth:`clean` (skip cleaning).
            contributions: with a head that has a tree part, return this many top features
                (embedding column and SHAP value toward the trees' predicted class) per
                prediction; 0 = none.
            search: where the neighbours come from (default: this predictor's index); the
                head votes over the labels it returns.
        """
        if ids is not None and len(ids) != len(sequences):
            raise ValueError(f"{len(ids)} ids for {len(sequences)} sequences")
        cleaned_seqs = sequences if cleaned else self.clean(sequences)
        x = self.encoder.embed(cleaned_seqs)
        k_show = k or self.head.k
        if search is None:
            proba, sims, pos = self.predict_vectors(x, ids, k_show)
            assert self.index is not None, "a predictor without its index needs a search"
            seq_ids, labels = self.index.ids[pos], self.index.labels[pos]
        else:
            proba, hits = predict_hits(self.head, x, search, ids, k_show)
            sims, pos, seq_ids, labels = hits.sims, hits.gids, hits.seq_ids, hits.labels
        proba = length_calibration.apply(self.head, proba, [len(s) for s in cleaned_seqs])  # per query length
        if self.ood is not None:
            ood = self.ood.score_sequences(cleaned_seqs, self.encoder, x)
            flags = self.ood.flag(ood)
        else:
            # k-th neighbour similarity -> OOD score (fewer than k neighbours: maximally unusual)
            kth = sims[:, self.head.k - 1] if sims.shape[1] >= self.head.k else np.full(len(sims), -np.inf)
            ood = self.head.ood_score(kth)
            flags = ood > 0.95
        adaptation = None
        if self.priors is not None:
            proba = self.priors.apply(proba, flags)
            adaptation = self.priors.summary()
            target_ood = self.priors.domain_ood(x)  # a target sample with labeled source rows: its domain classifier
            if target_ood is not None:
                rate = self.ood.cfg.rate if self.ood is not None else 0.05
                ood, flags = target_ood, target_ood > 1 - rate
                adaptation["ood"] = "domain classifier of the target sample (source rows below the query's score)"
        contrib = self.head.contributions(x, contributions) if contributions > 0 else None
        out = []
        for i in range(len(sequences)):
            nbrs = [Neighbour(str(seq_ids[i, j]), str(labels[i, j]), round(float(sims[i, j]), 6))
                    for j in range(min(k_show, pos.shape[1])) if pos[i, j] >= 0]
            out.append(Prediction(
                label=str(self.head.classes_[int(np.argmax(proba[i]))]),
                probabilities={str(c): round(float(v), 6) for c, v in zip(self.head.classes_, proba[i])},
                neighbours=nbrs,
                ood_score=round(float(ood[i]), 6),
                seq_id=None if ids is None else ids[i],
                ood=bool(flags[i]),
                adaptation=adaptation,
                contributions=None if contrib is None else contrib[i],
            ))
        return out

    def predict_vectors(self, x: np.ndarray, ids: list[str] | None = None,
                        k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """See :func:`predict_vectors`."""
        if self.index is None:
            raise ValueError("this predictor was loaded without its index: pass a search")
        return predict_vectors(self.index, self.head, x, ids, k)


def predict_vectors(index: VectorIndex, head: FusedHead, x: np.ndarray, ids: list[str] | None = None,
                    k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused probabilities for embeddings ``x`` (the vote uses the head's k), and the
    similarities and index rows of the ``max(k, head.k)`` nearest neighbours (own ids
    excluded). ``head`` must be attached to ``index``."""
    k = max(k or 0, head.k)
    sims, pos = index.search(x, k + 1)
    own = np.zeros_like(pos, dtype=bool)
    if ids is not None:
        own = (index.ids[np.clip(pos, 0, None)] == np.asarray(ids, dtype=object)[:, None]) & (pos >= 0)
    sims, pos = drop_own(sims, pos, own, k)
    return head.proba_from_neighbours(sims, pos, x), sims, pos


class _LabelRows:
    """The few rows a kNN vote reads, as the index the head is attached to: the labels of
    neighbours found elsewhere, row ``i`` = the ``i``-th neighbour of the batch."""

    def __init__(self, dim: int, labels: np.ndarray):
        self.dim, self.labels = dim, labels


def predict_hits(head: FusedHead, x: np.ndarray, search: SearchFn, ids: list[str] | None = None,
                 k: int | None = None) -> tuple[np.ndarray, Hits]:
    """:func:`predict_vectors` with the neighbours from ``search`` (``max(k, head.k) + 1`` asked
    for, own ids excluded): the head's kNN part votes over the labels ``search`` returns."""
    k = max(k or 0, head.k)
    hits = search(x, k + 1)
    own = np.zeros_like(hits.gids, dtype=bool)
    if ids is not None:
        own = (hits.seq_ids == np.asarray(ids, dtype=object)[:, None]) & (hits.gids >= 0)
    rows = np.arange(hits.gids.size, dtype=np.int64).reshape(hits.gids.shape)
    sims, rows = drop_own(hits.sims, rows, own, min(k, hits.gids.shape[1]))  # rows: flat positions in hits
    gids = hits.gids.ravel()[rows]
    labels = np.where(hits.gids.ravel() >= 0, hits.labels.ravel(), head.classes_[0])  # filler never votes (pos -1)
    local = copy.copy(head).attach_index(_LabelRows(head.n_features_in_, labels))  # per call: thread-safe
    proba = local.proba_from_neighbours(sims, np.where(gids >= 0, rows, -1), x)
    return proba, Hits(sims, gids, hits.seq_ids.ravel()[rows], hits.labels.ravel()[rows])
