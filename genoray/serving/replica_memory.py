"""Memory a serving replica declares to Ray, from the bundle it will hold.

A replica holds, privately: a Ray worker process with genoray imported, the encoder, head and
OOD scorer, the service, and the IVF quantizer (these are the capacity plan's serving terms,
:mod:`genoray.index.capacity`). The bundle's large files are the FAISS shards, the id tables and, for PQ
indexes, the re-rank vectors. Read into RAM (``mmap=False``) every replica holds its own copy;
memory-mapped (``mmap=True``), the node's page cache holds one copy that every replica on the
node maps, so each replica is charged its share of it (the mapped bytes divided by the replicas
that may share a node, at most ``max_replicas``).

A bundle served in shard groups (:mod:`genoray.serving.scatter`) runs two kinds of replica, each
declaring its own part (:func:`grouped_actor_options`): a ``searcher-<g>`` replica maps only
its group's shard files (and re-rank vectors), shared by the replicas of the node, and holds
its group's id rows privately (it sorts them by global id into memory of its own), plus the
shared IVF quantizer; the model replica holds the encoder, head and OOD scorer and no vectors.

Ray then never places more replicas on a node than its ``memory`` resource allows (the
``memory`` key of ``ray_actor_options``; ``ServeConfig.replica_memory_mb`` overrides the
estimate). Sizes come from the files of the version ``CURRENT`` points at when the application
is built (for a remote root, the object store's sizes: the driver downloads nothing); a much larger version published later needs a redeploy to be re-declared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from genoray.bundle import BundleManifest, file_uri, groups_of, version_uri
from genoray.bundle.manifest import HEAD_DIR, INDEX_DIR
from genoray.config import ServeConfig
from genoray.index.capacity import replica_bytes, shard_sizes
from genoray.infra import fs


def _head_bytes(vdir: str | Path, locate: Callable[[str], str] | None = None, files: Iterable[str] = ()) -> int:
    """The head, OOD scorer and priors of a version: read whole into every replica."""
    if locate is not None:  # a version whose files are stored elsewhere (a bundle's objects)
        return sum(fs.info(locate(f))[1] for f in files if f.startswith(f"{HEAD_DIR}/"))
    head = fs.join(vdir, HEAD_DIR)
    return sum(fs.info(fs.join(head, f))[1] for f in fs.list_files(head))


def _index_locator(locate: Callable[[str], str] | None) -> Callable[[str], str] | None:
    return None if locate is None else (lambda f: locate(f"{INDEX_DIR}/{f}"))


def replica_memory_bytes(vdir: str | Path, mmap: bool, replicas_per_node: int,
                         locate: Callable[[str], str] | None = None, files: Iterable[str] = ()) -> int:
    """What one replica holding the whole index of version directory ``vdir`` (a path or URI:
    sizes are asked of the store, nothing is downloaded) needs: its private part plus the
    mapped files in full (``mmap=False``) or shared among ``replicas_per_node`` replicas
    (``mmap=True``). ``locate(relative path)``: where each of the version's ``files`` is
    stored, when not under ``vdir`` (:func:`genoray.bundle.file_uri`)."""
    shards, quantizer = shard_sizes(fs.join(vdir, INDEX_DIR), _index_locator(locate))
    return replica_bytes(shards, quantizer, _head_bytes(vdir, locate, files), replicas_per_node, mmap=mmap)


def replica_actor_options(cfg: ServeConfig, served: BundleManifest | None) -> dict[str, Any]:
    """``ray_actor_options`` of the replicas that hold a bundle: CPUs, and memory from
    ``cfg.replica_memory_mb`` or, when 0, :func:`replica_memory_bytes` for the version
    ``served`` (``CURRENT``; ``None``, nothing published yet: no memory declared); for an
    ``s3://`` / ``gs://`` root, the object-store endpoint and region of this process, never its
    credentials (:func:`genoray.infra.fs.forwarded_env`)."""
    options: dict[str, Any] = {"num_cpus": cfg.num_cpus}
    if cfg.replica_memory_mb > 0:
        options["memory"] = int(cfg.replica_memory_mb * 2**20)
    elif served is not None:  # sized from the files' sizes where they are: the driver downloads nothing
        options["memory"] = replica_memory_bytes(version_uri(cfg.root, served.version), cfg.mmap, cfg.max_replicas,
                                                 lambda rel: file_uri(cfg.root, served, rel), served.files)
    if fs.is_remote(cfg.root) and (env := fs.forwarded_env()):  # the endpoint and region (credentials: each node's own chain)
        options["runtime_env"] = {"env_vars": env}
    return options


def group_id_bytes(root: str, served: BundleManifest) -> tuple[list[int], int]:
    """Per shard group of ``served``, the bytes of its id rows (an upper bound of what a replica
    that loads the group holds of its own: :class:`~genoray.serving.searcher.GroupIndex`), and
    the shared IVF quantizer's (0 without one); from the files' sizes where they are (nothing is
    downloaded)."""
    vdir = version_uri(root, served.version)
    shards, quantizer = shard_sizes(fs.join(vdir, INDEX_DIR), _index_locator(lambda rel: file_uri(root, served, rel)))
    return [sum(shards[i].ids for i in g) for g in groups_of(served) or []], quantizer


def local_groups_within(sizes: list[int], quantizer: int, budget: int) -> tuple[list[int], int]:
    """The groups (in order, each taken while it fits) whose id rows plus the quantizer (once) fit
    ``budget`` bytes, and the bytes they take (0 when none)."""
    taken, used = [], quantizer
    for g, size in enumerate(sizes):
        if used + size <= budget:
            taken.append(g)
            used += size
    return taken, used if taken else 0


def grouped_actor_options(cfg: ServeConfig, options: dict[str, Any], served: BundleManifest | None,
                          n_groups: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``ray_actor_options`` of the model deployment and of each ``searcher-<g>`` deployment of a
    shard-grouped bundle ``served``: ``options`` (:func:`replica_actor_options`) with the memory of each
    part, unchanged when ``cfg.replica_memory_mb`` sets it or nothing is published. A searcher
    maps its group's shard files (shared by the replicas of its node) and is charged its id
    tables' bytes of its own (an upper bound: it keeps 8-16 B a row); the model replica holds
    the encoder, head and OOD scorer, and the id rows of the groups it may search in-process
    (``cfg.local_groups_mb``)."""
    if cfg.replica_memory_mb > 0 or served is None:
        return options, [options] * n_groups
    groups = groups_of(served) or []
    if len(groups) != n_groups:
        raise ValueError(f"{cfg.root}: bundle {served.version} has {len(groups)} shard groups, serving {n_groups}")
    vdir = version_uri(cfg.root, served.version)

    def locate(rel: str) -> str:
        return file_uri(cfg.root, served, rel)

    shards, quantizer = shard_sizes(fs.join(vdir, INDEX_DIR), _index_locator(locate))
    searchers = [{**options, "memory": replica_bytes([shards[i] for i in g], quantizer, 0, cfg.max_replicas,
                                                     ids_mapped=False)} for g in groups]
    local = local_groups_within([sum(shards[i].ids for i in g) for g in groups], quantizer,
                                int(cfg.local_groups_mb * 2**20))[1]  # the groups it may search in-process
    return {**options, "memory": replica_bytes([], 0, _head_bytes(vdir, locate, served.files) + local, 1)}, searchers
