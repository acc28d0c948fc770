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

Groups on the replica's own node (``ServeConfig.local_groups_mb``): a model replica that finds
a group's files of the version it loads already on its node (a local root, or this
node's cache of a remote one, :func:`genoray.bundle.local_copy`) loads that group itself
(:class:`~genoray.serving.searcher.GroupIndex`, verified, memory-mapped: the page cache is shared
with the node's searchers; its id rows and the quantizer in memory of its own, within
``local_groups_mb``) and searches it in-process; only the other groups are called
(:func:`search_groups`). The answers are merged exactly as the scatter merges them, so the result
is the same; the local groups are loaded with the version and dropped with it, so versions never
mix. Each Ray call costs more than the whole in-process prediction (``bench/profile_groups.py``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np

from genoray.bundle import BundleManifest, current_version, groups_of, read_version, version_dir
from genoray.bundle.manifest import HEAD_DIR, INDEX_DIR
from genoray.bundle.store import local_copy
from genoray.config import ServeConfig
from genoray.index import merge_topk
from genoray.index.manifest import MANIFEST as INDEX_MANIFEST
from genoray.infra.errors import InvariantError
from genoray.predict import Hits, Predictor
from genoray.serving.backends import predict_batch
from genoray.serving.holder import BundleHolder, BundleReplica
from genoray.serving.replica_memory import group_id_bytes, grouped_actor_options, local_groups_within
from genoray.serving.searcher import CACHED_VERSIONS, GenoraySearcher, GroupIndex, _verify, group_files

__all__ = ["CACHED_VERSIONS", "GenoraySearcher", "GroupHolder", "GroupIndex", "GroupUnavailable", "gather_async",
           "group_files", "group_model", "group_searchers", "merge_parts", "on_loop", "predict_groups",
           "predict_groups_async", "running_loop", "scatter", "scatter_async", "search_groups"]
log = logging.getLogger(__name__)
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


async def gather_async(searchers: dict[int, Any], version: str, x: np.ndarray, k: int, timeout_s: float,
                       retries: int) -> dict[int, dict[str, Any]]:
    """Search the groups ``searchers`` (group -> handle) at ``version`` concurrently, awaiting the
    answers in this event loop and retrying a group on another of its replicas when one dies;
    each group's answer (unchecked: :func:`merge_parts` checks the versions)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
    from ray.serve.exceptions import ReplicaUnavailableError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    calls = {g: s.search.remote(x, k, version) for g, s in searchers.items()}
    parts: dict[int, dict[str, Any]] = {}
    for g in searchers:
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
    return parts


def merge_parts(parts: dict[int, dict[str, Any]], version: str, k: int, seen: dict[str, str] | None = None) -> Hits:
    """Every group's answer checked to be at ``version`` (and noted in ``seen``), merged by
    similarity in group order: :class:`Hits` equal to one index holding every shard."""
    merged = [parts[g] for g in sorted(parts)]
    for g in sorted(parts):
        if parts[g]["version"] != version:
            raise InvariantError(f"searcher-{g} searched {parts[g]['version']} for a request at {version}")
        if seen is not None:
            seen[f"searcher-{g}"] = f"{parts[g]['version']}@{parts[g]['replica']}"
    sims, gids, (seq_ids, labels) = merge_topk([p["sims"] for p in merged], [p["gids"] for p in merged], k,
                                               [[p["seq_ids"] for p in merged], [p["labels"] for p in merged]])
    return Hits(sims, gids, seq_ids, labels)


async def scatter_async(searchers: list, version: str, x: np.ndarray, k: int, timeout_s: float, retries: int,
                        seen: dict[str, str] | None = None) -> Hits:
    """Search every group at ``version`` through its searchers (:func:`gather_async`); merged :class:`Hits`."""
    parts = await gather_async(dict(enumerate(searchers)), version, x, k, timeout_s, retries)
    return merge_parts(parts, version, k, seen)


def search_groups(searchers: list, local: dict[int, GroupIndex], version: str, x: np.ndarray, k: int,
                  timeout_s: float, retries: int, seen: dict[str, str] | None = None,
                  loop: asyncio.AbstractEventLoop | None = None) -> Hits:
    """Every group at ``version``: those in ``local`` (loaded at that version in this process)
    searched here, while the others' searchers are called on ``loop`` (:func:`on_loop`); merged
    as :func:`scatter` merges, so the result is the same."""
    remote = {g: s for g, s in enumerate(searchers) if g not in local}
    call = gather_async(remote, version, x, k, timeout_s, retries) if remote else None
    pending = asyncio.run_coroutine_threadsafe(call, loop) if call is not None and loop is not None else None
    parts = {g: {**idx.search(x, k), "replica": "local"} for g, idx in local.items()}
    if pending is not None:
        parts.update(pending.result())
    elif call is not None:
        parts.update(on_loop(call, None))
    return merge_parts(parts, version, k, seen)


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
                 retries: int = 3, trust_remote_code: bool = False, loop: asyncio.AbstractEventLoop | None = None,
                 local_groups_mb: float = ServeConfig.local_groups_mb):
        self.searchers, self.timeout_s, self.retries = list(searchers), timeout_s, retries
        self.loop = loop  # the replica's event loop: where the searcher handles are awaited (on_loop)
        self.local_groups_mb = local_groups_mb  # ServeConfig.local_groups_mb
        self.local: dict[str, dict[int, GroupIndex]] = {}  # version -> the groups searched in this process
        super().__init__(root, poll_s=poll_s, trust_remote_code=trust_remote_code)

    def describe(self) -> dict[str, Any]:
        """``GET /v1/info`` of this replica: the bundle and the number of shard groups it searches."""
        local = sorted(self.local.get(self.version, {}))
        return {**super().describe(), "shard_groups": len(self.searchers), "local_groups": local}

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
        predictor = Predictor.load(vdir / INDEX_DIR, vdir / HEAD_DIR, with_index=False,
                                   trust_remote_code=self.trust_remote_code)
        self.local[version] = self._load_local(version, len(groups))
        return predictor, doc

    def _load_local(self, version: str, n_groups: int) -> dict[int, GroupIndex]:
        """The groups of ``version`` that fit ``local_groups_mb`` (:func:`~genoray.serving.replica_memory.local_groups_within`)
        and whose files are on this node already (:func:`genoray.bundle.local_copy`), loaded and
        verified here like a searcher loads them."""
        local: dict[int, GroupIndex] = {}
        if self.local_groups_mb <= 0:
            return local
        sizes, quantizer = group_id_bytes(str(self.root), read_version(self.root, version))
        for g in local_groups_within(sizes, quantizer, int(self.local_groups_mb * 2**20))[0]:
            if local_copy(self.root, version, group_files(self.root, version, g)[3]) is not None:
                local[g] = GroupIndex(self.root, version, g)
        if local:
            log.info("bundle %s: shard groups %s searched in this replica, %d by their searchers", version,
                     sorted(local), n_groups - len(local))
        return local

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
        try:
            super().load(version)
        finally:  # batches keep the groups of the version they started with (_Batch)
            for v in list(self.local):  # a copy: another thread's load may add its version meanwhile
                if v != self.version:
                    self.local.pop(v, None)


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
        local = holder.local.get(self.version, {})  # a swap meanwhile: the groups not found are called

        def search(x: np.ndarray, k: int) -> Hits:
            return search_groups(holder.searchers, local, self.version, x, k, 0.8 * holder.timeout_s, holder.retries,
                                 self.seen, holder.loop)

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
                                      cfg.trust_remote_code, running_loop(), cfg.local_groups_mb)

        @serve.batch(max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s)
        async def predict(self, requests: list) -> list[dict[str, Any]]:
            return await predict_groups_async(self.holder, requests)

        def info(self) -> dict[str, Any]:
            return self.holder.describe()

    return GenorayModel.bind(cfg.root, cfg.poll_s, *searchers)  # type: ignore[attr-defined]
