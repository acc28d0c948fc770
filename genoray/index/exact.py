"""The exact pass of a build or an extend: the exact top-``k`` (cosine) of the held-out recall
queries over every indexed row, the oracle ``nprobe`` is tuned against.

One task per store partition (:func:`exact_part`, spread over the cluster's nodes on Ray) reads
its rows streamed, :data:`~genoray.index.stages.BATCH_ROWS` at a time, and returns only its
top-``k`` per query; the caller merges each result as it arrives (:func:`exact_topk`), so the
O(n) read is spread over the nodes, a task holds O(batch + queries x k) and the caller
O(queries x k), whatever the number of partitions. The similarities are returned too: a
recall calibration set stores them (:mod:`genoray.index.calibration`) so that a nightly
extend searches only the new partitions exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoray.embedding.store import EMBEDDING
from genoray.index.core import _faiss
from genoray.index.knn import l2_normalize, merge_topk
from genoray.index.stages import _node_id, _peak_rss_mb, _resolve, _split_batches, _vectors


def exact_part(store_path: str, part: dict[str, Any], split: str | None, d: int, queries: Any,
               k: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Exact top-``k`` (cosine) of ``queries`` among one partition's rows, as global ids, and
    where it ran (``node_id``, ``pid``, the worker's ``peak_rss_mb``) and the ``rows`` it read."""
    faiss = _faiss()
    q = l2_normalize(np.asarray(_resolve(queries)))
    best = (np.full((len(q), 0), -np.inf, np.float32), np.zeros((len(q), 0), np.int64))
    pos = 0
    for t in _split_batches(store_path, part["file"], split, [EMBEDDING], part.get("offset", 0), part["rows"]):
        sims, top = faiss.knn(q, _vectors(t, d), min(k, t.num_rows), metric=faiss.METRIC_INNER_PRODUCT)
        best = merge_topk([best[0], sims], [best[1], top + part["gid_start"] + pos], k)[:2]
        pos += t.num_rows
    return best[0], best[1], {"node_id": _node_id(), "pid": os.getpid(), "peak_rss_mb": _peak_rss_mb(), "rows": pos}


@dataclass(frozen=True)
class ExactPass:
    """How an exact pass ran: its tasks (one per partition), the nodes they ran on, how many ran
    in the calling process (0 on Ray), the largest worker's peak RSS (MB) and the store rows
    the tasks read."""

    tasks: int
    nodes: tuple[str, ...]
    in_caller: int
    peak_task_rss_mb: float
    rows: int = 0


def exact_topk(ex: Any, store_path: str, parts: list[dict[str, Any]], split: str | None, d: int, queries: Any,
               k: int = 10, **opts: Any) -> tuple[np.ndarray, np.ndarray, ExactPass]:
    """The exact top-``k`` similarities and global ids, each ``(len(queries), k)``, of
    ``queries`` (as returned by ``ex.put``) over ``parts``, one :func:`exact_part` task per
    partition run by the executor ``ex`` (spread over the nodes; ``opts``: task options such as
    ``num_cpus``). Results are merged as they complete; the merge (ties by smaller id) does not
    depend on their order."""
    best: tuple[np.ndarray, np.ndarray] | None = None
    nodes, here, tasks, peak, rows = set(), 0, 0, 0.0, 0
    calls = [(store_path, p, split, d, queries, k) for p in parts]
    for sims, ids, where in ex.stream(exact_part, calls, spread=True, **opts):
        best = (sims, ids) if best is None else merge_topk([best[0], sims], [best[1], ids], k)[:2]
        nodes.add(str(where["node_id"]))
        here += int(where["pid"] == os.getpid())
        tasks += 1
        peak = max(peak, float(where["peak_rss_mb"]))
        rows += int(where["rows"])
    if best is None:
        raise ValueError(f"{store_path}: no partitions to search exactly")
    return best[0], best[1], ExactPass(tasks, tuple(sorted(nodes)), here, round(peak, 1), rows)
