"""Memory a serving replica declares to Ray, from the bundle it will hold.

A replica holds, privately: a Ray worker process with genoray imported, the encoder, head and
OOD scorer, the service, and the IVF quantizer (these are the capacity plan's serving terms,
:mod:`genoray.plan`). The bundle's large files are the FAISS shards, the id tables and, for PQ
indexes, the re-rank vectors. Read into RAM (``mmap=False``) every replica holds its own copy;
memory-mapped (``mmap=True``), the node's page cache holds one copy that every replica on the
node maps, so each replica is charged its share of it (the mapped bytes divided by the replicas
that may share a node, at most ``max_replicas``).

A bundle served in shard groups (:mod:`genoray.scatter`) runs two kinds of replica, each
declaring its own part (:func:`grouped_actor_options`): a ``searcher-<g>`` replica maps only
its group's shard files (and re-rank vectors), shared by the replicas of the node, and holds
its group's id rows privately (it sorts them by global id into memory of its own), plus the
shared IVF quantizer; the model replica holds the encoder, head and OOD scorer and no vectors.

Ray then never places more replicas on a node than its ``memory`` resource allows (the
``memory`` key of ``ray_actor_options``; ``ServeConfig.replica_memory_mb`` overrides the
estimate). Sizes come from the files of the version ``CURRENT`` points at when the application
is built; a much larger version published later needs a redeploy to be re-declared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genoray.artifacts import read_json

SERVE_EXTRA = 200 * 2**20  # encoder, head, FastAPI and Serve's replica machinery (plan.py's serving allowance)
PARQUET_ID_ROW = 48        # an older index's Parquet id table, decoded into Arrow (plan.ID_TABLE_ROW)


def bundle_sizes(vdir: str | Path) -> dict[str, int]:
    """Bytes of a version directory: ``mapped`` (shards, id tables, re-rank vectors: what
    ``mmap`` maps) and ``resident`` (quantizer, head, OOD scorer: always read into memory)."""
    vdir = Path(vdir)
    manifest = read_json(vdir / "index" / "manifest.json")
    mapped = 0
    for s in manifest["shards"]:
        for name in s["sha256"]:
            p = vdir / "index" / name
            mapped += int(s["ntotal"]) * PARQUET_ID_ROW if name.endswith(".parquet") else p.stat().st_size
    resident = sum(p.stat().st_size for p in (vdir / "head").rglob("*") if p.is_file())
    if manifest.get("shared_quantizer"):
        resident += (vdir / "index" / manifest["trained"]["file"]).stat().st_size
    return {"mapped": mapped, "resident": resident}


def replica_memory_bytes(vdir: str | Path, mmap: bool, replicas_per_node: int) -> int:
    """What one replica holding ``vdir`` needs: its private part plus the mapped files in full
    (``mmap=False``) or shared among ``replicas_per_node`` replicas (``mmap=True``)."""
    from genoray.plan import RAY_WORKER_BASE

    sizes = bundle_sizes(vdir)
    share = sizes["mapped"] / max(1, replicas_per_node) if mmap else sizes["mapped"]
    return int(RAY_WORKER_BASE + SERVE_EXTRA + sizes["resident"] + share)


def replica_actor_options(cfg) -> dict[str, Any]:
    """``ray_actor_options`` of the replicas that hold a bundle: CPUs, and memory from
    ``cfg.replica_memory_mb`` or, when 0, :func:`replica_memory_bytes` for ``CURRENT``
    (nothing published yet: no memory declared); for an ``s3://`` / ``gs://`` root, the
    object-store environment of this process (:func:`genoray.fs.forwarded_env`)."""
    from genoray import fs
    from genoray.bundle import current_version, version_dir

    options: dict[str, Any] = {"num_cpus": cfg.num_cpus}
    if cfg.replica_memory_mb > 0:
        options["memory"] = int(cfg.replica_memory_mb * 2**20)
    elif (version := current_version(cfg.root)) is not None:  # a remote root: sized from this node's copy
        options["memory"] = replica_memory_bytes(version_dir(cfg.root, version), cfg.mmap, cfg.max_replicas)
    if fs.is_remote(cfg.root) and (env := fs.forwarded_env()):  # the endpoint and credentials this process uses
        options["runtime_env"] = {"env_vars": env}
    return options


def _ids_bytes(path: Path, ntotal: int) -> int:
    """An id table held in memory: an Arrow IPC file's size, or an older Parquet table decoded."""
    return ntotal * PARQUET_ID_ROW if path.suffix == ".parquet" else path.stat().st_size


def group_sizes(vdir: str | Path, groups: list[list[int]]) -> list[dict[str, int]]:
    """Bytes of each shard group of a version directory: ``mapped`` (its FAISS shard files and
    re-rank vectors, memory-mapped), ``ids`` (its id rows, held privately) and ``resident``
    (the shared IVF quantizer every searcher reads into memory; 0 without one)."""
    vdir = Path(vdir)
    manifest = read_json(vdir / "index" / "manifest.json")
    resident = 0
    if manifest.get("shared_quantizer"):
        resident = (vdir / "index" / manifest["trained"]["file"]).stat().st_size
    out = []
    for group in groups:
        mapped = ids = 0
        for i in group:
            s = manifest["shards"][i]
            for name in s["sha256"]:
                p = vdir / "index" / name
                if name == s["ids"]:
                    ids += _ids_bytes(p, int(s["ntotal"]))
                else:
                    mapped += p.stat().st_size
        out.append({"mapped": mapped, "ids": ids, "resident": resident})
    return out


def searcher_memory_bytes(sizes: dict[str, int], replicas_per_node: int) -> int:
    """What one ``searcher-<g>`` replica needs, from its group's :func:`group_sizes` entry: the
    process and Serve's replica machinery, the quantizer and id rows in full, the mapped shard
    files shared among ``replicas_per_node`` replicas (a searcher always maps its shards)."""
    from genoray.plan import RAY_WORKER_BASE

    return int(RAY_WORKER_BASE + SERVE_EXTRA + sizes["resident"] + sizes["ids"]
               + sizes["mapped"] / max(1, replicas_per_node))


def model_memory_bytes(vdir: str | Path) -> int:
    """What the model replica of a grouped bundle needs: the process, Serve's machinery, the
    encoder, and the head and OOD scorer (``head/``); no vectors, no quantizer."""
    from genoray.plan import RAY_WORKER_BASE

    head = sum(p.stat().st_size for p in (Path(vdir) / "head").rglob("*") if p.is_file())
    return int(RAY_WORKER_BASE + SERVE_EXTRA + head)


def grouped_actor_options(cfg, options: dict[str, Any], n_groups: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``ray_actor_options`` of the model deployment and of each ``searcher-<g>`` deployment of a
    shard-grouped bundle: ``options`` (:func:`replica_actor_options`) with the memory of each part
    (:func:`model_memory_bytes`, :func:`searcher_memory_bytes` of ``CURRENT``'s groups); unchanged
    when ``cfg.replica_memory_mb`` sets it or nothing is published."""
    from genoray.bundle import current_version, version_dir
    from genoray.scatter import groups_of, read_doc

    version = current_version(cfg.root)
    if cfg.replica_memory_mb > 0 or version is None:
        return options, [options] * n_groups
    groups = groups_of(read_doc(cfg.root, version)) or []
    if len(groups) != n_groups:
        raise ValueError(f"{cfg.root}: bundle {version} has {len(groups)} shard groups, serving {n_groups}")
    vdir = version_dir(cfg.root, version)
    searchers = [{**options, "memory": searcher_memory_bytes(s, cfg.max_replicas)} for s in group_sizes(vdir, groups)]
    return {**options, "memory": model_memory_bytes(vdir)}, searchers
