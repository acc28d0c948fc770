"""A bundle root's format: ``bundle.json`` of a version (:class:`BundleManifest`), the
``CURRENT`` pointer (:class:`Current`) and the layout's names.

Layout of a bundle root (a local directory, ``s3://`` or ``gs://``)::

    CURRENT                     Current: the published version and the sha256 of its bundle.json
    objects/<sha[:2]>/<sha>     every file of every version, stored once by its sha256 (format 2)
    versions/<version>/         immutable once written (local files read-only)
        bundle.json             BundleManifest, written last: a version without it is incomplete;
                                its ``files`` ({relative path: sha256}) are the version's references
        index/ ...              a genoray.index directory      } format 1: copies; format 2 on a
        head/  ...              a genoray.heads directory      } local root: hard links to objects/,
                                (head.json + head.npz, ...)    } on object storage: absent
    staging/                    (local roots) versions being written, never loaded
    leases/<version>/<holder>   a replica's claim on a version; its body is the heartbeat time

Format 2 (content-addressed, :mod:`genoray.bundle.objects`): a version adds only the objects the
root lacks (an extended index shares its old shards, quantizer and id tables with its base),
uploaded before its ``bundle.json``; a node's cache (``<cache>/bundles/<hash of root>/``) keeps
the same ``objects/`` and builds each version's view under ``versions/<version>[+<files hash>]/``
from hard links to them. Format-1 versions (files copied under ``versions/<version>/``) still
load; :func:`genoray.bundle.collect_garbage` deletes the objects no remaining version lists.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import field
from typing import Any, ClassVar

from genoray.config import CleanPolicy
from genoray.index.manifest import RecallReport
from genoray.infra.documents import record

MANIFEST = "bundle.json"
CURRENT = "CURRENT"
VERSIONS = "versions"
STAGING = "staging"
LEASES = "leases"
OBJECTS = "objects"
INDEX_DIR = "index"
HEAD_DIR = "head"


@record
class BundleIndex:
    """The index of a version, in brief: factory, rows and recall@10."""

    factory: str
    ntotal: int
    recall_at_10: RecallReport | None = None


@record
class BundleManifest:
    """``bundle.json`` of a version.

    Attributes:
        format_version / version / parent / created_at: identity and lineage.
        encoder / fingerprint: the encoder every vector and the head were made with.
        classes: the head's classes, in its order.
        index: factory, ntotal and recall@10 of the index.
        metrics: what the writer measured (reindex gate report, evaluation).
        files: sha256 of every file of the version except ``bundle.json``.
        clean: the :class:`~genoray.config.CleanPolicy` the store was built with; serving
            cleans queries with it (``None``: an older bundle; the default is used).
        shard_groups: the index shards each searcher deployment holds, one tuple of shard
            numbers per group (:mod:`genoray.bundle.groups`); ``None``: one group.
    """

    KIND: ClassVar[str] = "bundle manifest"
    FORMAT_VERSION: ClassVar[int] = 2
    READABLE: ClassVar[tuple[int, ...]] = (1, 2)  # 1: files under versions/<v>/; 2: objects/ by digest
    format_version: int
    version: str
    parent: str | None
    created_at: str
    encoder: dict[str, Any]
    fingerprint: str
    classes: tuple[str, ...]
    index: BundleIndex
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    clean: CleanPolicy | None = None
    shard_groups: tuple[tuple[int, ...], ...] | None = None


@record
class Current:
    """``CURRENT``: the published version and the sha256 of its ``bundle.json``."""

    version: str
    bundle_sha256: str


def new_version_name() -> str:
    """Sortable by creation time (microseconds), unique by a random suffix."""
    ns = time.time_ns()
    stamp = time.strftime("v%Y%m%d-%H%M%S", time.gmtime(ns / 1e9))
    return f"{stamp}.{(ns // 1000) % 1_000_000:06d}-{uuid.uuid4().hex[:6]}"
