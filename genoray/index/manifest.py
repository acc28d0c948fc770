"""The index directory's format: ``manifest.json`` (:class:`IndexManifest`) and its file names.

An index directory holds::

    manifest.json       IndexManifest: type, factory string, search params, metric, dim, ntotal,
                        encoder spec + fingerprint, recall@10, and for every shard its files +
                        sha256; written last
    shard-XX.faiss      faiss.write_index output (IVF shards share one trained quantizer)
    trained.faiss       the trained empty index (IVF: the quantizer every shard shares)
    ids-XX.arrow        gid (int64), seq_id, label of the shard's rows, in gid order: an
                        uncompressed Arrow IPC file, memory-mapped when serving (format 3 and
                        earlier wrote ``ids-XX.parquet``; both load)
    refine-XX.npy       (PQ indexes only) float16 normalised vectors of the shard's rows in gid
                        order, memory-mapped to re-rank candidates
    calibration.npz     (format 5) the recall calibration set: held-out queries and their exact
                        top-10 over every indexed row (:mod:`genoray.index.calibration`); a
                        nightly extend updates it from the delta rows alone

While a build runs it also holds ``trained.json`` (what the trained index was made from, so a
resumed build reuses it) and ``parts/`` (one add task's files per store partition).
"""

from __future__ import annotations

import os
from dataclasses import field
from typing import Any, ClassVar

from genoray.config import CleanPolicy
from genoray.infra import fs
from genoray.infra.documents import read_document, record, write_document

MANIFEST = "manifest.json"
TRAINED = "trained.faiss"
TRAINED_RECORD = "trained.json"
CALIBRATION = "calibration.npz"
PARTS = "parts"


def shard_file(i: int) -> str:
    """The FAISS file of shard ``i``."""
    return f"shard-{i:02d}.faiss"


def ids_file(i: int) -> str:
    """The id table of shard ``i``."""
    return f"ids-{i:02d}.arrow"


def refine_file(i: int) -> str:
    """The re-rank vectors of shard ``i`` (PQ indexes)."""
    return f"refine-{i:02d}.npy"


@record
class IndexShard:
    """One shard: its FAISS file (``index``), id table (``ids``), rows, the sha256 of each of its
    files, its first global id and (PQ) its re-rank vectors."""

    index: str
    ids: str
    ntotal: int
    sha256: dict[str, str]
    gid_start: int = 0
    refine: str | None = None
    peak_rss_mb: float | None = None  # of the task that merged it (build provenance)


@record
class TrainedIndex:
    """The trained empty index every IVF shard shares, and the training sample size."""

    file: str
    sha256: str
    train_sample: int


@record
class IndexPartition:
    """One add task's rows: ``rows`` rows of split from ``offset`` of store part ``file``
    (sha256 ``part_sha256``), global ids from ``gid_start``."""

    key: str
    file: str
    part_sha256: str
    offset: int
    rows: int
    gid_start: int


@record
class RecallReport:
    """recall@10 reached against exact search, and on what queries."""

    value: float
    queries: int
    oracle: str
    target: float | None = None
    queries_from: str | None = None
    floor: float | None = None


@record
class RecallCalibration:
    """The recall calibration set of an index version (``calibration.npz``, read by
    :func:`genoray.index.calibration.read_calibration`): its file and sha256, its ``queries``
    and ``k``, the indexed ``rows`` its exact top-``k`` covers (the version's ``ntotal``),
    where the queries came from, the oracle, and how many nightly deltas were merged into it
    since the full exact pass that made it."""

    file: str
    sha256: str
    queries: int
    k: int
    rows: int
    oracle: str
    queries_from: str | None = None
    updates: int = 0


@record
class BuildInfo:
    """How the build ran: partitions (resumed), the nodes that added, the largest worker; or,
    for an incremental build, its base, the rows it added and the nodes of its exact pass."""

    partitions: int | None = None
    resumed: int | None = None
    add_nodes: tuple[str, ...] | None = None
    peak_worker_rss_mb: float | None = None
    incremental: bool | None = None
    base: str | None = None
    delta_rows: int | None = None
    shift: dict[str, Any] | None = None
    exact_nodes: tuple[str, ...] | None = None


@record
class IndexManifest:
    """``manifest.json`` of an index directory.

    Attributes:
        format_version: :attr:`FORMAT_VERSION` (older :attr:`READABLE` formats still load).
        type / factory / metric: FAISS index type, factory string, ``"cosine"``.
        dim / ntotal: vector size and number of indexed rows.
        encoder / fingerprint: the store's encoder spec and fingerprint (``None`` for an
            in-memory index made by :meth:`~genoray.index.core.VectorIndex.from_vectors`).
        split / source_store / gpu_trained: what was indexed, from where, and how.
        search_params: ``nprobe`` / ``efSearch`` / ``k_factor`` tuned to the target recall.
        recall_at_10: recall reached against exact search, with the query set described.
        shards: the shards, in gid order.
        shared_quantizer: IVF shards share the quantizer stored once in ``trained``.
        trained: the trained empty index file, its sha256 and training sample size.
        partitions: the store partitions the build added.
        build: how the build ran.
        clean: the store's :class:`~genoray.config.CleanPolicy`, carried to bundles and the
            predictor (``None``: the store predates it; the default is then used).
        calibration: the recall calibration set (format 5; ``None``: built before it, or an
            in-memory index; the next extend then runs a full exact pass and writes one).
    """

    KIND: ClassVar[str] = "index manifest"
    FORMAT_VERSION: ClassVar[int] = 5
    READABLE: ClassVar[tuple[int, ...]] = (2, 3, 4, 5)
    format_version: int
    type: str
    factory: str
    metric: str
    dim: int
    ntotal: int
    encoder: dict[str, Any] | None = None
    fingerprint: str | None = None
    split: str | None = None
    source_store: str | None = None
    gpu_trained: bool | None = None
    search_params: dict[str, int] = field(default_factory=dict)
    recall_at_10: RecallReport | None = None
    shards: tuple[IndexShard, ...] = ()
    shared_quantizer: bool = False
    trained: TrainedIndex | None = None
    partitions: tuple[IndexPartition, ...] = ()
    build: BuildInfo | None = None
    clean: CleanPolicy | None = None
    calibration: RecallCalibration | None = None

    def files(self) -> dict[str, str]:
        """sha256 of every file the index loads (shards, id tables, re-rank vectors, trained)."""
        out = {name: digest for s in self.shards for name, digest in s.sha256.items()}
        if self.shared_quantizer and self.trained is not None:
            out[self.trained.file] = self.trained.sha256
        return out


def read_manifest(path: str | os.PathLike) -> IndexManifest:
    """The manifest of the index directory ``path``, a local path or a URI (checks the format,
    not the files)."""
    p = fs.join(path, MANIFEST)
    if not fs.is_file(p):
        raise FileNotFoundError(f"{path}: not an index directory (no {MANIFEST})")
    return read_document(IndexManifest, p)


def write_manifest(path: str | os.PathLike, manifest: IndexManifest) -> None:
    """Write ``manifest.json`` (last: it makes the directory an index)."""
    write_document(fs.join(path, MANIFEST), manifest)
