"""Cosine k-nearest-neighbour arithmetic in numpy: normalisation, the exact search used as the
oracle, the one merge of per-shard (or per-group) top-k lists, and recall. Re-exported by
:mod:`genoray.index`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2-normalised float32 copy (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def exact_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k in numpy (the oracle for recall and tests)."""
    sims = l2_normalize(queries) @ l2_normalize(base).T
    k = min(k, base.shape[0])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, top, axis=1), top


def merge_topk(sims: list[np.ndarray], ids: list[np.ndarray], k: int,
               payload: Sequence[list[np.ndarray]] = ()) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Merge per-shard top-k lists into one: larger similarity first, ties by smaller global
    id (the order :func:`exact_search` gives), missing (-1) ids last with similarity -inf.
    ``payload``: per-shard arrays aligned with ``ids`` (seq_ids, labels), each merged the same
    way. Returns ``(sims, ids, merged payload)``, each array ``(n, min(k, total))``."""
    s = np.concatenate(sims, axis=1)
    i = np.concatenate(ids, axis=1)
    s = np.where(i >= 0, s, -np.inf)
    tie = np.where(i >= 0, i, np.iinfo(np.int64).max)
    order = np.lexsort((tie, -s), axis=1)[:, :k]

    def take(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, order, 1)

    return take(s).astype(np.float32), take(i), [take(np.concatenate(p, axis=1)) for p in payload]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids found."""
    hits = [len(set(f[f >= 0]) & set(t)) / max(len(t), 1) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0
