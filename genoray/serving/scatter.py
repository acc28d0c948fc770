"""Scatter-gather serving over shard groups, for a bundle that does not fit one replica.

A bundle may record ``shard_groups`` (lists of index shard numbers, see :func:`genoray.bundle.groups.shard_groups`).
With more than one group, ``genoray serve`` runs (in either topology of :mod:`genoray.serving.app`):

* one ``searcher-<g>`` deployment per group (:class:`GenoraySearcher`), each autoscaled on its
  own. A searcher replica loads only its group's shards and their seq_id / label rows, verified
  against ``bundle.json``, for the versions it is asked for: ``CURRENT`` at start, the next one
  when ``CURRENT`` moves (it watches it), and any version a request names (at most
  :data:`CACHED_VERSIONS` held at a time);
* replicas that hold the encoder, head and OOD scorer but no vectors (:class:`GroupHolder`):
  with ``ingress="haproxy"`` (the default) the direct-ingress ``GenorayReplica`` replicas
  behind HAProxy, which serve the API and batch their own requests
  (:func:`genoray.serving.app.build_app`), with ``ingress="proxy"`` the ``GenorayModel``
  replicas behind Serve's proxy (:func:`group_model`). A batch is embedded once, sent to every group concurrently with its
  bundle version, and the groups' top-k lists are merged by similarity (larger first, ties by
  global id: :func:`genoray.index.knn.merge_topk`) before the head votes over the merged neighbours. The result equals one index
  holding every shard (the merge is the one a sharded :class:`~genoray.index.VectorIndex` does).

Versions never mix (in either topology; "model replica" below is the replica that holds the
encoder and head): a batch is searched at the one version its model replica serves, a
searcher answers at exactly the version asked for (loading it if needed) and says which, and
the model checks it. A model replica moves to a new ``CURRENT`` only after every group answered
that it has loaded it. A searcher replica that dies is retried on another replica of its group;
when a whole group cannot answer in time the request fails with 503 naming the group, never a
partial answer.
"""

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
import pyarrow.compute as pc

from genoray.bundle import BundleManifest, current_version, file_uri, groups_of, read_version, version_dir, version_uri
from genoray.bundle.manifest import HEAD_DIR, INDEX_DIR
from genoray.index import VectorIndex, merge_topk, read_manifest
from genoray.index.core import open_shards
from genoray.index.manifest import MANIFEST as INDEX_MANIFEST
from genoray.index.manifest import IndexManifest
from genoray.infra.artifacts import verify_files
from genoray.infra.documents import read_document
from genoray.infra.errors import InvariantError
from genoray.predict import Hits, Predictor
from genoray.serving.backends import predict_batch
from genoray.serving.holder import BundleHolder, BundleReplica, public_error, replica_id
from genoray.serving.replica_memory import grouped_actor_options

log = logging.getLogger(__name__)
CACHED_VERSIONS = 2  # per searcher replica: the version served and the one being swapped to


def _verify(vdir: Path, doc: BundleManifest, files: list[str]) -> None:
    """Verify the files of a version that one replica loads (a group's shards, or the head)."""
    missing = [f for f in files if f not in doc.files]
    if missing:
        raise ValueError(f"{vdir}: bundle.json lists no sha256 for {missing[:3]}")
    verify_files(vdir, {f: doc.files[f] for f in files})


class GroupIndex:
    """One shard group of one bundle version: its FAISS shards (a shared IVF quantizer
    attached) and the seq_id / label of its rows, searched like a sharded VectorIndex."""

    def __init__(self, root: str | Path, version: str, group: int):
        self.version, self.group = version, group
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
        files = [f"{INDEX_DIR}/{f}" for f in files]
        vdir = version_dir(root, version, files)  # on a remote root, this node fetches this group's files only
        _verify(vdir, doc, files)
        idir = vdir / INDEX_DIR
        if read_manifest(idir) != m:  # what was fetched and verified is what chose the files
            raise ValueError(f"{version_uri(root, version)}: the index manifest changed while loading group {group}")
        indexes, tables, refine = open_shards(idir, m, shards, mmap=True)  # page cache shared by replicas
        t = pa.concat_tables(tables)
        t = t.take(pc.sort_indices(t["gid"]))
        self.gids = t["gid"].to_numpy()
        self.seq_ids, self.labels = t["seq_id"].combine_chunks(), t["label"].combine_chunks()
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
        take = pa.array(rows.ravel())
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


class GroupUnavailable(RuntimeError):
    """No replica of a shard group answered in time (the API's 503)."""


def on_loop(coro, loop: asyncio.AbstractEventLoop | None):
    """Run ``coro`` from a worker thread on ``loop`` (the replica's event loop: in Serve's
    throughput-optimized mode, the HAProxy topology, a handle's router lives in the loop that
    first used it, so every call of a handle is awaited there), or on a loop of its own
    (``None``: outside a replica)."""
    if loop is None:
        return asyncio.run(coro)
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread (a Serve replica's constructor runs in its loop), or ``None``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def scatter_async(searchers: list, version: str, x: np.ndarray, k: int, timeout_s: float, retries: int,
                        seen: dict[str, str] | None = None) -> Hits:
    """Search every group at ``version`` concurrently, awaiting the searchers' answers in this
    event loop and retrying a group on another of its replicas when one dies; merged :class:`Hits`."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
    from ray.serve.exceptions import ReplicaUnavailableError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    calls = {g: s.search.remote(x, k, version) for g, s in enumerate(searchers)}
    parts: dict[int, dict[str, Any]] = {}
    for g in range(len(searchers)):
        attempt = 0
        while g not in parts:
            try:
                parts[g] = await asyncio.wait_for(calls[g], max(0.001, deadline - loop.time()))
            except (ActorDiedError, ActorUnavailableError, ReplicaUnavailableError) as e:
                attempt += 1
                log.warning("searcher-%d replica lost (attempt %d): %s", g, attempt, type(e).__name__)
                if attempt > retries or loop.time() >= deadline:
                    raise GroupUnavailable(f"shard group {g} (searcher-{g}): no replica answered after "
                                           f"{attempt} attempts") from e
                await asyncio.sleep(min(0.05 * 2 ** attempt, 0.5, max(0.0, deadline - loop.time())))
                calls[g] = searchers[g].search.remote(x, k, version)
            except TimeoutError as e:
                calls[g].cancel()
                raise GroupUnavailable(f"shard group {g} (searcher-{g}) did not answer within {timeout_s:g} s") from e
            except Exception as e:  # noqa: BLE001  e.g. its files of this version fail verification: a
                # RayTaskError, or (Serve's gRPC transport, the HAProxy topology) the searcher's own error
                cause = e.cause if isinstance(e, RayTaskError) and getattr(e, "cause", None) is not None else e
                log.error("searcher-%d cannot search %s: %s", g, version, cause)  # paths stay in the log
                raise GroupUnavailable(f"shard group {g} (searcher-{g}) cannot search bundle {version} "
                                       f"({type(cause).__name__}; see the service log)") from e
        if parts[g]["version"] != version:
            raise InvariantError(f"searcher-{g} searched {parts[g]['version']} for a request at {version}")
        if seen is not None:
            seen[f"searcher-{g}"] = f"{parts[g]['version']}@{parts[g]['replica']}"
    merged = [parts[g] for g in range(len(searchers))]
    sims, gids, (seq_ids, labels) = merge_topk([p["sims"] for p in merged], [p["gids"] for p in merged], k,
                                               [[p["seq_ids"] for p in merged], [p["labels"] for p in merged]])
    return Hits(sims, gids, seq_ids, labels)


def scatter(searchers: list, version: str, x: np.ndarray, k: int, timeout_s: float, retries: int,
            seen: dict[str, str] | None = None, loop: asyncio.AbstractEventLoop | None = None) -> Hits:
    """:func:`scatter_async` from a worker thread (the predictor's search is synchronous), run on
    ``loop`` (:func:`on_loop`)."""
    return on_loop(scatter_async(searchers, version, x, k, timeout_s, retries, seen), loop)


class GroupHolder(BundleHolder):
    """A model replica's bundle: encoder, head and OOD scorer of ``CURRENT`` (no vectors),
    and the searcher handles of its shard groups. Switches version only when every group has
    the new one loaded."""

    def __init__(self, root: str | Path, poll_s: float, searchers: list, timeout_s: float = 10.0,
                 retries: int = 3, trust_remote_code: bool = False, loop: asyncio.AbstractEventLoop | None = None):
        self.searchers, self.timeout_s, self.retries = list(searchers), timeout_s, retries
        self.loop = loop  # the replica's event loop: where the searcher handles are awaited (on_loop)
        super().__init__(root, poll_s=poll_s, trust_remote_code=trust_remote_code)

    def describe(self) -> dict[str, Any]:
        """``GET /v1/info`` of this replica: the bundle and the number of shard groups it searches."""
        return {**super().describe(), "shard_groups": len(self.searchers)}

    def _open(self, version: str | None) -> tuple[Predictor, BundleManifest]:
        version = version or current_version(self.root)
        if version is None:
            raise FileNotFoundError(f"{self.root}: no CURRENT bundle has been published")
        doc = read_version(self.root, version)
        groups = groups_of(doc) or [[]]
        if len(groups) != len(self.searchers):
            raise ValueError(f"bundle {version} has {len(groups)} shard group(s); this service runs "
                             f"{len(self.searchers)}: redeploy to serve it")
        files = [f"{INDEX_DIR}/{INDEX_MANIFEST}"] + [f for f in doc.files if f.startswith(f"{HEAD_DIR}/")]
        vdir = version_dir(self.root, version, files)  # the head and the index manifest: no vectors
        _verify(vdir, doc, files)
        return Predictor.load(vdir / INDEX_DIR, vdir / HEAD_DIR, with_index=False,
                              trust_remote_code=self.trust_remote_code), doc

    def load(self, version: str) -> None:
        """Swap to ``version`` once every shard group reports it loaded (else keep serving and retry)."""
        failed = [0]

        async def ready() -> None:
            calls = [s.ready.remote(version) for s in self.searchers]
            for g, call in enumerate(calls):
                failed[0] = g
                await asyncio.wait_for(call, 120)

        try:
            on_loop(ready(), self.loop)
        except Exception as e:
            self.last_error = f"bundle {version} not ready on shard group {failed[0]}: {type(e).__name__}: {e}"
            log.warning(self.last_error)
            raise
        super().load(version)


class _Searching:
    """A predictor whose ``predict`` searches the shard groups (what ``predict_batch`` calls)."""

    def __init__(self, predictor: Predictor, search):
        self.predictor, self.search = predictor, search
        self.clean = predictor.clean

    def predict(self, *args, **kwargs):
        return self.predictor.predict(*args, search=self.search, **kwargs)


class _Batch:
    """What :func:`genoray.serving.backends.predict_batch` needs of a holder, for one batch: the snapshot
    with the groups' search bound to its version, and a replica name that lists the version
    and replica each group searched (the ``X-Genoray-Replica`` header)."""

    def __init__(self, holder: GroupHolder):
        self._holder, self.monitor = holder, holder.monitor
        predictor, self.version = holder.snapshot()
        self.seen: dict[str, str] = {}

        def search(x: np.ndarray, k: int) -> Hits:
            return scatter(holder.searchers, self.version, x, k, 0.8 * holder.timeout_s, holder.retries, self.seen,
                           holder.loop)

        self.predictor = _Searching(predictor, search)

    def snapshot(self):
        return self.predictor, self.version

    @property
    def replica(self) -> str:
        return " ".join([self._holder.replica, *(f"{g}={v}" for g, v in sorted(self.seen.items()))])


def predict_groups(holder: GroupHolder, requests: list) -> list[dict[str, Any]]:
    """:func:`genoray.serving.backends.predict_batch` over the shard groups; a group that cannot answer
    becomes the API's 503 naming it."""
    from fastapi import HTTPException

    try:
        return predict_batch(_Batch(holder), requests)  # type: ignore[arg-type]  # duck-typed holder
    except GroupUnavailable as e:
        raise HTTPException(503, f"{e}; retry later", headers={"Retry-After": "1"}) from None


async def predict_groups_async(holder: GroupHolder, requests: list) -> list[dict[str, Any]]:
    """:func:`predict_groups` on a worker thread (the scatter waits there), so the replica's event
    loop keeps taking requests meanwhile (what :class:`~genoray.serving.backends.BatchedBackend` runs)."""
    return await asyncio.get_running_loop().run_in_executor(None, predict_groups, holder, requests)


def group_searchers(cfg, replica_options: dict[str, Any], served: BundleManifest) -> tuple[dict[str, Any], list]:
    """The bound ``searcher-<g>`` deployments of the shard-grouped bundle ``served`` (one per
    group, each declaring its own memory: :func:`genoray.serving.replica_memory.grouped_actor_options`)
    and the Ray actor options of the replicas in front of them (encoder and head, no vectors)."""
    from ray import serve

    n_groups = len(groups_of(served) or [[]])
    model_opts, group_opts = grouped_actor_options(cfg, replica_options["ray_actor_options"], served, n_groups)
    searchers = [serve.deployment(**{**replica_options, "ray_actor_options": group_opts[g]})(GenoraySearcher)
                 .options(name=f"searcher-{g}").bind(cfg.root, g, cfg.poll_s) for g in range(n_groups)]
    return model_opts, searchers


def group_model(cfg, replica_options: dict[str, Any], served: BundleManifest):
    """The bound ``GenorayModel`` deployment of the shard-grouped bundle ``served``, with one
    ``searcher-<g>`` deployment per group behind it (put it behind the ingress: ``ingress="proxy"``)."""
    from ray import serve

    model_opts, searchers = group_searchers(cfg, replica_options, served)

    @serve.deployment(**{**replica_options, "ray_actor_options": model_opts})
    class GenorayModel(BundleReplica):
        def __init__(self, root: str, poll_s: float, *groups):
            self.holder = GroupHolder(root, poll_s, list(groups), cfg.predict_timeout_s, cfg.retries,
                                      cfg.trust_remote_code, running_loop())

        @serve.batch(max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s)
        async def predict(self, requests: list) -> list[dict[str, Any]]:
            return await predict_groups_async(self.holder, requests)

        def info(self) -> dict[str, Any]:
            return self.holder.describe()

    return GenorayModel.bind(cfg.root, cfg.poll_s, *searchers)  # type: ignore[attr-defined]
