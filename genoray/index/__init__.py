"""The FAISS index: :func:`build_index` (per store partition, in one process or on Ray) and
:class:`VectorIndex` (load, search).

Modules: :mod:`.manifest` (the directory's format), :mod:`.factory` (which index a corpus
gets), :mod:`.core` (:class:`VectorIndex`), :mod:`.columns` (Arrow id and label columns),
:mod:`.knn` (normalisation, the exact oracle, the one top-k merge, recall), :mod:`.build` and
:mod:`.stages` (the build and its Ray tasks), :mod:`.exact` (the exact pass, streamed per
partition), :mod:`.calibration` (the recall calibration set a night updates from its delta
rows), :mod:`.delta` (adding a store's new rows to an index) and :mod:`.capacity` (the plan:
what every stage needs before any work).
"""

from genoray.index.build import IndexReport, RecallNotReached, build_index
from genoray.index.columns import ArrowColumn, as_column
from genoray.index.core import VectorIndex, gpu_count, shard_of
from genoray.index.factory import choose_factory
from genoray.index.knn import exact_search, l2_normalize, merge_topk, recall_at_k
from genoray.index.manifest import MANIFEST, IndexManifest, read_manifest

__all__ = [
    "MANIFEST", "ArrowColumn", "IndexManifest", "IndexReport", "RecallNotReached", "VectorIndex", "as_column",
    "build_index", "choose_factory", "exact_search", "gpu_count", "l2_normalize", "merge_topk", "read_manifest",
    "recall_at_k", "shard_of",
]
