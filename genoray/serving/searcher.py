"""The searcher side of shard-grouped serving (:mod:`genoray.serving.scatter`): one shard group
of one bundle version loaded and searched (:class:`GroupIndex`), and the replica class of the
``searcher-<g>`` deployments (:class:`GenoraySearcher`). A replica that holds the encoder and
head loads a :class:`GroupIndex` itself for the groups whose files are on its node
(``ServeConfig.local_groups``): the same loading, verification and search as a searcher's."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from genoray.bundle import BundleManifest, current_version, file_uri, groups_of, read_version, version_dir, version_uri
from genoray.bundle.manifest import INDEX_DIR
from genoray.index import VectorIndex, read_manifest
from genoray.index.columns import ArrowColumn
from genoray.index.core import open_shards
from genoray.index.manifest import MANIFEST as INDEX_MANIFEST
from genoray.index.manifest import IndexManifest
from genoray.infra.artifacts import verify_files
from genoray.infra.documents import read_document
from genoray.infra.errors import InvariantError
from genoray.serving.holder import public_error, replica_id

log = logging.getLogger(__name__)
CACHED_VERSIONS = 2  # per searcher replica: the version served and the one being swapped to


def _verify(vdir: Path, doc: BundleManifest, files: list[str]) -> None:
    """Verify the files of a version that one replica loads (a group's shards, or the head)."""
    missing = [f for f in files if f not in doc.files]
    if missing:
        raise ValueError(f"{vdir}: bundle.json lists no sha256 for {missing[:3]}")
    verify_files(vdir, {f: doc.files[f] for f in files})


def group_files(root: str | Path, version: str, group: int) -> tuple[BundleManifest, IndexManifest, list, list[str]]:
    """``bundle.json``, the index manifest, the shards and the files (relative to the version)
    of one shard group of ``version``: what a replica of that group fetches, verifies and loads."""
    doc = read_version(root, version)
    # which files this group needs, read where the version stores its index manifest
    m = read_document(IndexManifest, file_uri(root, doc, f"{INDEX_DIR}/{INDEX_MANIFEST}"))
    groups = groups_of(doc) or [list(range(len(m.shards)))]
    if group >= len(groups):
        raise ValueError(f"bundle {version} has {len(groups)} shard group(s); no group {group}")
    shards = [m.shards[i] for i in groups[group]]
    files = [INDEX_MANIFEST, *(f for s in shards for f in s.sha256)]
    if m.shared_quantizer and m.trained:
        files.append(m.trained.file)
    return doc, m, shards, [f"{INDEX_DIR}/{f}" for f in files]


class GroupIndex:
    """One shard group of one bundle version: its FAISS shards (a shared IVF quantizer
    attached) and the seq_id / label of its rows, searched like a sharded VectorIndex.

    Shards and id tables are memory-mapped (shared by the node's replicas); the group's own
    memory is its global ids sorted, 8 B a row (16 while loading, and kept when the shards' ids
    are not in order: the sort order). The replica's memory declared to Ray counts the id
    tables' bytes, at least 16 B a row: an upper bound."""

    def __init__(self, root: str | Path, version: str, group: int):
        self.version, self.group = version, group
        doc, m, shards, files = group_files(root, version, group)
        vdir = version_dir(root, version, files)  # on a remote root, this node fetches this group's files only
        _verify(vdir, doc, files)
        idir = vdir / INDEX_DIR
        if read_manifest(idir) != m:  # what was fetched and verified is what chose the files
            raise ValueError(f"{version_uri(root, version)}: the index manifest changed while loading group {group}")
        indexes, tables, refine = open_shards(idir, m, shards, mmap=True)  # page cache shared by replicas
        t = pa.concat_tables(tables)  # the mapped tables as chunks: nothing copied
        gids = t["gid"].to_numpy()  # the one column of its own: 8 B a row, and 8 more when not sorted
        self.order = None if bool(np.all(gids[1:] > gids[:-1])) else np.argsort(gids, kind="stable")
        self.gids = gids if self.order is None else gids[self.order]
        # seq_ids and labels stay mapped (shared by the node's replicas): a search takes its rows
        self.seq_ids, self.labels = ArrowColumn(t["seq_id"]), ArrowColumn(t["label"])
        sub = dataclasses.replace(m, shards=tuple(shards), ntotal=len(self.gids))
        self.index = VectorIndex(indexes, self.seq_ids, self.labels, sub)
        self.index.refine = refine

    def search(self, x: np.ndarray, k: int) -> dict[str, Any]:
        """Top-``k`` of this group: similarities, global ids, seq_ids and labels (lists of rows)."""
        sims, gids = self.index.search(x, k)
        rows = np.searchsorted(self.gids, np.clip(gids, 0, None))
        rows = np.clip(rows, 0, max(len(self.gids) - 1, 0))
        valid = gids >= 0
        if valid.any() and not np.array_equal(self.gids[rows[valid]], gids[valid]):
            raise InvariantError(f"group {self.group} of {self.version}: a shard returned ids outside its id table")
        take = (rows if self.order is None else self.order[rows]).ravel()  # rows of the mapped tables
        return {"sims": sims, "gids": gids, "version": self.version,
                "seq_ids": np.array(self.seq_ids.take(take).to_pylist(), dtype=object).reshape(gids.shape),
                "labels": np.array(self.labels.take(take).to_pylist(), dtype=object).reshape(gids.shape)}


class GenoraySearcher:
    """A searcher replica of one shard group (the class behind the ``searcher-<g>`` deployments)."""

    def __init__(self, root: str, group: int, poll_s: float = 2.0):
        self.root, self.group, self.poll_s = root, group, poll_s
        self.replica = replica_id()  # opaque: never the host name or pid
        self._cache: OrderedDict[str, GroupIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._refused: set[str | None] = set()  # versions this group could not preload
        self.last_error: str | None = None
        version = current_version(self.root)
        if version is None:
            raise FileNotFoundError(f"{self.root}: no CURRENT bundle has been published")
        try:
            self.get(version)  # synchronous: a replica starts with CURRENT's shards loaded
        except Exception as e:  # a version this group cannot load: the model keeps its own, loaded on demand
            self.last_error = f"{type(e).__name__}: {e}"
            log.error("searcher-%d could not load CURRENT %s: %s", group, version, self.last_error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="group-watch", daemon=True)
        self._thread.start()

    def get(self, version: str) -> GroupIndex:
        """This group of ``version``, loaded (and verified) on first use; the least recently
        used version beyond :data:`CACHED_VERSIONS` is dropped. Searches of loaded versions
        never wait for a load."""
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
            loading = self._loading.setdefault(version, threading.Lock())
        with loading:  # one load per version; concurrent requests for it wait for that one
            with self._lock:
                if version in self._cache:
                    return self._cache[version]
            t0 = time.perf_counter()
            idx = GroupIndex(self.root, version, self.group)
            with self._lock:
                self._cache[version] = idx
                self._loading.pop(version, None)
                while len(self._cache) > CACHED_VERSIONS:
                    self._cache.popitem(last=False)
            log.info("searcher-%d loaded %s (%d rows) in %.2f s", self.group, version, len(idx.gids),
                     time.perf_counter() - t0)
            return idx

    async def search(self, x: np.ndarray, k: int, version: str) -> dict[str, Any]:
        """Top-``k`` of this group at exactly ``version`` (with the version and this replica)."""
        loop = asyncio.get_running_loop()
        idx = await loop.run_in_executor(None, self.get, version)
        out = await loop.run_in_executor(None, idx.search, x, k)
        return {**out, "replica": self.replica}

    async def ready(self, version: str) -> bool:
        """Load ``version`` if needed; True once this replica can search it."""
        await asyncio.get_running_loop().run_in_executor(None, self.get, version)
        return True

    def info(self) -> dict[str, Any]:
        """Group, loaded versions, replica, its Ray node and the last load error."""
        import ray

        return {"group": self.group, "versions": list(self._cache), "replica": self.replica,
                "node": ray.get_runtime_context().get_node_id(), "last_error": public_error(self.last_error)}

    def check_health(self) -> None:
        """Fails when the watcher stopped (Serve then replaces this replica)."""
        if not self._thread.is_alive():
            raise RuntimeError(f"searcher-{self.group}: CURRENT watcher stopped")

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            version = None  # stays None when CURRENT itself cannot be read (next poll)
            try:
                version = current_version(self.root)
                if version and version not in self._cache and version not in self._refused:
                    self.get(version)  # preload, so the model's switch finds it ready
            except Exception as e:  # a version this group cannot load: requests for it fail clearly
                self._refused.add(version)  # versions are immutable: not preloaded again
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("searcher-%d: %s", self.group, self.last_error)
