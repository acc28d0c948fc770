"""Bounded samples of a store's split for evaluation, the reindex gate and ``genoray shift``,
and the interval that states what a sample's accuracy says about the whole split.

:func:`read_sample` reads a seeded, class-stratified sample of at most ``n_max`` rows of one
split in two streamed passes over the store (16k-row batches): the first reads only the label
and split columns and counts each class, the second keeps the sampled rows' ids, labels,
domains and vectors (:class:`genoray.heads.common.StratifiedStream`). Memory is one batch plus
the sample; time is one pass over the store's label and split columns and one over its
vectors, whatever ``n_max``. When the split holds no more than ``n_max`` rows, the sample is
every row in store order, exactly what ``EmbeddingStore.load(split)`` returns.

:func:`wilson_interval` is the Wilson score interval of a proportion (accuracy: the correctly
predicted rows out of the sample); MCC and AUROC get percentile bootstrap intervals
(:func:`genoray.evaluation.metrics.bootstrap_ci`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genoray.embedding.store import DOMAIN, EMBEDDING, LABEL, SEQ_ID, SPLIT, Embeddings, EmbeddingStore, vectors_of
from genoray.heads.common import StratifiedStream

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass
class Sample:
    """A bounded sample of a split: its rows, how many rows the split holds and per class
    (``None``: unlabeled rows), and whether the sample is every row."""

    rows: Embeddings
    total: int
    counts: dict[str | None, int]

    @property
    def complete(self) -> bool:
        """Whether the sample is the whole split."""
        return len(self.rows) == self.total

    def describe(self) -> dict[str, int | bool]:
        """JSON-ready: rows sampled, rows in the split, whether that is all of them."""
        return {"rows": len(self.rows), "of": self.total, "complete": self.complete}


def _in_split(t: pa.Table, split: str | None) -> pa.Table:
    return t if split is None else t.filter(pc.equal(t[SPLIT], split))


def read_sample(store: EmbeddingStore, split: str | None, n_max: int, seed: int, stratify: bool = True) -> Sample:
    """A seeded sample of at most ``n_max`` rows of ``split`` (``None``: every row), in store
    order (see the module docstring). ``stratify``: each label kept in proportion (at least one
    row per label; unlabeled rows are one more stratum; the size may differ from ``n_max`` by
    the rounding, one row per label); otherwise a uniform sample of exactly ``min(n, n_max)`` rows."""
    counts: dict[str | None, int] = {}
    for t in store.iter_batches([LABEL, SPLIT]):
        t = _in_split(t, split)
        if not t.num_rows:
            continue
        vc = pc.value_counts(t[LABEL].combine_chunks())
        for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            counts[v] = counts.get(v, 0) + int(c)
    named = sorted(k for k in counts if k is not None)
    order: list[str | None] = [*named, *([None] if None in counts else [])]
    stream = StratifiedStream([counts[k] for k in order] if stratify else [sum(counts.values())], n_max, seed)
    value_set = pa.array(named, pa.string())
    ids, labels, domains, splits, vecs = [], [], [], [], []
    for t in store.iter_batches([SEQ_ID, LABEL, DOMAIN, SPLIT, EMBEDDING]):
        t = _in_split(t, split)
        if not t.num_rows:
            continue
        codes = pc.index_in(t[LABEL], value_set=value_set).fill_null(len(named)).to_numpy(zero_copy_only=False) \
            if stratify else np.zeros(t.num_rows, dtype=np.int64)
        keep = stream.take(np.asarray(codes, dtype=np.int64))
        if len(keep):
            t = t.take(pa.array(keep))
            ids += t[SEQ_ID].to_pylist()
            labels += t[LABEL].to_pylist()
            domains += t[DOMAIN].to_pylist()
            splits += t[SPLIT].to_pylist()
            vecs.append(vectors_of(t, store.dim).copy())
    rows = Embeddings(np.array(ids, dtype=object), np.array(labels, dtype=object), np.array(domains, dtype=object),
                      np.array(splits, dtype=object),
                      np.concatenate(vecs) if vecs else np.zeros((0, store.dim), np.float32))
    return Sample(rows, stream.n, {k: counts[k] for k in order})


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95% with the default ``z``):
    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``; ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    den = 1 + z * z / n
    return max(0.0, (centre - half) / den), min(1.0, (centre + half) / den)
