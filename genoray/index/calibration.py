"""The recall calibration set of an index version: ``calibration.npz``, stored as data beside the
shards, so that a nightly extend checks recall exactly at O(delta) cost.

A full build (:func:`genoray.index.build_index`) already computes, for its held-out recall
queries, the exact top-10 over every indexed row (:mod:`genoray.index.exact`). It keeps them:
``calibration.npz`` holds the ``queries`` (float32, as drawn), their exact top-``k`` global
``ids`` (int64) and similarities ``sims`` (float32, cosine), the number of indexed ``rows`` they
cover and ``k``; the manifest records its sha256 and what it covers
(:class:`~genoray.index.manifest.RecallCalibration`). It is read with
``np.load(allow_pickle=False)`` after its sha256 is checked.

A nightly extend (:func:`genoray.index.delta.extend_index`) searches the stored queries exactly
over the **delta rows only** and merges that top-``k`` with the stored one
(:func:`~genoray.index.knn.merge_topk`: larger similarity first, ties by smaller global id, the
order a brute-force search gives). The delta's global ids all follow the old ones, so the merge
is exactly the top-``k`` over old + delta rows: the recall the night measures (and tunes
``nprobe`` against) is exact, and the exact pass reads the night's new rows, not the whole
index. The new version gets the updated set.

What it covers, and what it does not: the queries are those of the full build (held-out rows
from outside the indexed split when the store has any), so the night's recall is the recall of
*that* query distribution on the grown index, every row of which (old and new) can be an answer.
The night's new rows as *queries* are not in it: a new-row query's exact top-10 would need every
old row read again, the O(n) pass this set removes. Their distribution is guarded instead by
drift rule 1 (the shift test of the new rows against a sample of the old ones, which forces a
retrain), and the next full build draws a fresh query set. An index without a calibration set
(built before format 5) falls back to the full exact pass once, with new-row queries, and its
extended version gets a calibration set from that pass.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoray.index.exact import ExactPass, exact_topk
from genoray.index.knn import merge_topk
from genoray.index.manifest import CALIBRATION, MANIFEST, IndexManifest, RecallCalibration
from genoray.infra import fs
from genoray.infra.names import safe_join

#: the oracle a calibration set's top-k is
ORACLE = "exact cosine over all indexed rows"
ORACLE_MERGED = ORACLE + " (stored top-10 merged with an exact pass over each night's delta rows)"


@dataclass(frozen=True)
class CalibrationSet:
    """Held-out ``queries`` ``(q, d)`` and their exact top-``k`` ``sims`` / global ``ids``
    ``(q, k)`` over the first ``rows`` indexed rows."""

    queries: np.ndarray
    sims: np.ndarray
    ids: np.ndarray
    rows: int

    @property
    def k(self) -> int:
        """Neighbours per query."""
        return int(self.ids.shape[1])


def write_calibration(out: str | os.PathLike, cal: CalibrationSet, queries_from: str | None, oracle: str = ORACLE,
                      updates: int = 0) -> RecallCalibration:
    """Write ``calibration.npz`` into the index directory ``out`` (a path or URI, atomically)
    and return the manifest entry that names it, with its sha256."""
    buf = io.BytesIO()
    np.savez(buf, queries=np.ascontiguousarray(cal.queries, np.float32), sims=np.ascontiguousarray(cal.sims, np.float32),
             ids=np.ascontiguousarray(cal.ids, np.int64), rows=np.int64(cal.rows), k=np.int64(cal.k))
    data = buf.getvalue()
    fs.write_bytes(fs.join(out, CALIBRATION), data)
    return RecallCalibration(file=CALIBRATION, sha256=hashlib.sha256(data).hexdigest(), queries=len(cal.queries),
                             k=cal.k, rows=cal.rows, oracle=oracle, queries_from=queries_from, updates=updates)


def read_calibration(index_dir: str | os.PathLike, m: IndexManifest) -> tuple[CalibrationSet | None, str]:
    """The calibration set of the index at ``index_dir`` (manifest ``m``), or ``None`` and why
    it cannot be used (none recorded, file missing, sha256 or shape mismatch, rows other than
    the manifest's ``ntotal``): the caller then runs the full exact pass."""
    ref = m.calibration
    if ref is None:
        return None, f"{index_dir}: no calibration set (index format {m.format_version})"
    path = safe_join(index_dir, ref.file, fs.join(index_dir, MANIFEST))
    if not fs.is_file(path):
        return None, f"{path}: calibration set missing"
    data = fs.read_bytes(path)
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        return None, f"{path}: sha256 differs from the manifest's {ref.sha256[:12]}"
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        cal = CalibrationSet(z["queries"], z["sims"], z["ids"], int(z["rows"]))
    q = len(cal.queries)
    if cal.queries.ndim != 2 or cal.queries.shape[1] != m.dim or cal.ids.shape != (q, ref.k) or \
            cal.sims.shape != cal.ids.shape or q != ref.queries:
        return None, f"{path}: shapes {cal.queries.shape} / {cal.ids.shape} do not match the manifest"
    if cal.rows != m.ntotal or ref.rows != m.ntotal:
        return None, f"{path}: covers {cal.rows} rows, the index holds {m.ntotal}"
    return cal, ""


def update_calibration(ex: Any, store_path: str, cal: CalibrationSet, delta: list[dict[str, Any]],
                       split: str | None, d: int, **opts: Any) -> tuple[CalibrationSet, ExactPass]:
    """``cal`` extended to the rows of the ``delta`` partitions (global ids after ``cal.rows``):
    their exact top-``k`` of the stored queries (one :func:`~genoray.index.exact.exact_part`
    task per delta partition, run by ``ex`` with ``opts``) merged with the stored top-``k``.
    Exact, because every delta id is larger than every stored one and the merge orders ties by
    id; the exact pass reads only the delta rows."""
    if any(int(p["gid_start"]) < cal.rows for p in delta):
        raise ValueError(f"{store_path}: a delta partition starts inside the {cal.rows} rows the calibration covers")
    sims, ids, ran = exact_topk(ex, store_path, delta, split, d, ex.put(cal.queries), cal.k, **opts)
    s, i, _ = merge_topk([cal.sims, sims], [cal.ids, ids], cal.k)
    return CalibrationSet(cal.queries, s, i, cal.rows + sum(int(p["rows"]) for p in delta)), ran
