"""``Predictor``: encoder + index + fused head -> one :class:`Prediction` per sequence.

Plain Python (no Ray): the same object runs in a notebook, a batch job or a Serve replica.
Each prediction carries the label, calibrated class probabilities, the k neighbours used as
evidence (seq_id, label, cosine similarity) and an out-of-distribution score in [0, 1]: the
fraction of training sequences whose k-th neighbour is closer than this query's (values near 1
mean the query is farther from the reference data than almost all of it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genoray.config import CleanPolicy
from genoray.encoders import Encoder, encoder_from_spec, fingerprint
from genoray.heads import FusedHead, drop_own, load_head
from genoray.index import VectorIndex
from genoray.sequences import Cleaner


@dataclass(frozen=True)
class Neighbour:
    seq_id: str
    label: str
    similarity: float


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    neighbours: list[Neighbour]
    ood_score: float
    seq_id: str | None = None
    contributions: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["contributions"] is None:  # only present when asked for
            del d["contributions"]
        return d


class Predictor:
    """Predict labels with evidence. Build with :meth:`load` from saved index and head dirs."""

    def __init__(self, encoder: Encoder, index: VectorIndex, head: FusedHead, clean: CleanPolicy | None = None):
        if index.dim != encoder.dim or head.n_features_in_ != encoder.dim:
            raise ValueError(f"dimension mismatch: encoder {encoder.dim}, index {index.dim}, head {head.n_features_in_}")
        self.encoder, self.index, self.head = encoder, index, head.attach_index(index)
        self.cleaner = Cleaner(clean or CleanPolicy())

    @classmethod
    def load(cls, index_dir: str | Path, head_dir: str | Path) -> "Predictor":
        index = VectorIndex.load(index_dir)
        encoder = encoder_from_spec(index.manifest["encoder"])
        fp = fingerprint(encoder)
        if fp != index.manifest["fingerprint"]:
            raise ValueError(f"{index_dir}: encoder fingerprint {fp} != manifest {index.manifest['fingerprint']}")
        return cls(encoder, index, load_head(head_dir, encoder_fingerprint=fp))

    def clean(self, sequences: list[str]) -> list[str]:
        out = []
        for i, s in enumerate(sequences):
            seq, why = self.cleaner(s)
            if why is not None:
                raise ValueError(f"sequence {i}: {why}")
            out.append(seq)
        return out

    def predict(self, sequences: list[str], ids: list[str] | None = None, k: int | None = None,
                contributions: int = 0) -> list[Prediction]:
        """Predict for raw sequences (cleaned with the predictor's policy).

        Args:
            sequences: DNA sequences.
            ids: optional ids; a query whose id is in the index does not vote for itself.
            k: neighbours to return as evidence (default: the head's k).
            contributions: with a head that has a tree part, return this many top features
                (embedding column and SHAP value toward the trees' predicted class) per
                prediction; 0 = none.
        """
        if ids is not None and len(ids) != len(sequences):
            raise ValueError(f"{len(ids)} ids for {len(sequences)} sequences")
        x = self.encoder.embed(self.clean(sequences))
        k_show = k or self.head.k
        proba, sims, pos = self.predict_vectors(x, ids, k_show)
        # k-th neighbour similarity -> OOD score (fewer than k neighbours: maximally unusual)
        kth = sims[:, self.head.k - 1] if sims.shape[1] >= self.head.k else np.full(len(sims), -np.inf)
        ood = self.head.ood_score(kth)
        contrib = self.head.contributions(x, contributions) if contributions > 0 else None
        out = []
        for i in range(len(sequences)):
            nbrs = [Neighbour(str(self.index.ids[p]), str(self.index.labels[p]), round(float(s), 6))
                    for s, p in zip(sims[i, :k_show], pos[i, :k_show]) if p >= 0]
            out.append(Prediction(
                label=str(self.head.classes_[int(np.argmax(proba[i]))]),
                probabilities={str(c): round(float(v), 6) for c, v in zip(self.head.classes_, proba[i])},
                neighbours=nbrs,
                ood_score=round(float(ood[i]), 6),
                seq_id=None if ids is None else ids[i],
                contributions=None if contrib is None else contrib[i],
            ))
        return out

    def predict_vectors(self, x: np.ndarray, ids: list[str] | None = None,
                        k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """See :func:`predict_vectors`."""
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
