"""The FAISS index: :func:`build_index` (per store partition, in one process or on Ray) and
:class:`VectorIndex` (load, search). See :mod:`genoray.index.build` and
:mod:`genoray.index.core`; the numpy kNN helpers live in :mod:`genoray.knn`."""

from genoray.index.build import IndexReport, RecallNotReached, build_index
from genoray.index.core import (
    FORMAT_VERSION,
    MANIFEST,
    ArrowColumn,
    IndexManifest,
    VectorIndex,
    as_column,
    choose_factory,
    gpu_count,
    read_manifest,
    shard_of,
)
from genoray.knn import exact_search, l2_normalize, merge_topk, recall_at_k

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "ArrowColumn",
    "IndexManifest",
    "IndexReport",
    "RecallNotReached",
    "VectorIndex",
    "as_column",
    "build_index",
    "choose_factory",
    "exact_search",
    "gpu_count",
    "l2_normalize",
    "merge_topk",
    "read_manifest",
    "recall_at_k",
    "shard_of",
]
