"""Costs of the stages around the index build that the capacity plan adds (issue #28 item 3):
dedup/verification, publish, transfer to a serving node, the serving node's cold start and the
reindex night, and the four quantities every stage of the plan states.

Each function returns a stage dict with the uniform keys of :data:`QUANTITIES`:

* ``seconds``: wall time on the threads the stage really uses (``threads``: a driver pass and a
  Ray task with ``IndexConfig.add_cpus < 2`` run on one thread, whatever the node has);
* ``peak_bytes``: peak resident memory of the stage's largest process;
* ``disk_bytes``: bytes the stage leaves on disk (or in object storage);
* ``moved_bytes``: bytes the stage reads and writes (store, index, bundle files).

The models follow today's code paths (the store's sha256 pass, planned on one thread although
the build runs it as tasks; a publish that hashes every file of the version, loads it to check
that a replica can, and stores only the objects the bundle root lacks (content-addressed
``objects/``); a fresh node that downloads the whole version, a serving node that downloads
only a night's new objects; a reindex night that re-tunes against an exact pass over every row
and refits the head only when its new rows exceed ``ReindexConfig.head_refit_fraction``); when
those paths change, the constants here change with them and ``bench/bench_growth.py`` shows
the error.
"""

from __future__ import annotations

from typing import Any

MB = 2**20

QUANTITIES = ("seconds", "peak_bytes", "disk_bytes", "moved_bytes")
HASH_MB_S = 1700.0         # sha256 on one core, MB/s: hashlib over 256 MiB on the project machine, idle (calibration)
COPY_MB_S = 600.0          # local file copy, MB/s
LOAD_MB_S = 800.0          # reading an index / id table file into memory, MB/s
NET_MB_S = 100.0           # object storage -> node download, MB/s (assumed: a 1 Gbit/s link, not measured here)
START_S = 0.5              # a command's process start: python + numpy + pyarrow + faiss + the store code imported
PIPELINE_START_S = 2.0     # ... + the heads, predictor and encoders (sklearn, transformers) imported
RAY_START_S = 12.0         # ray.init of a local cluster and its first workers' imports
# START_S and PIPELINE_START_S: `python -c "import genoray.embedding.store"` 0.46 s and
# `... import genoray.pipeline.train` 1.9 s on the idle project machine (2 cores, 2026-12-05; a calibration: they
# scale with the machine's load); RAY_START_S was measured while it was shared (load ~10) and is not refitted
# (the Ray build is within 0.98-1.05x of plan at 1M with it). They matter below ~1M rows.
LIGHT_BASE = 140 * MB       # a process that imports the store code only (the verification): 139-141 MiB measured
PIPELINE_BASE = 215 * MB    # a process that imports the heads, predictor and encoders (publish): 215-226 MiB
ANON_BASE = 137 * MB        # private anonymous memory of a searcher beside its quantizer and id gids: fitted to the
                            # clustered 1M predict of bench_growth (146 MiB private; 132-136 MiB before an index)
GID_BYTES = 8               # per row of a mapped index that a searcher reads into its own memory: the int64 gids
DEDUP_RANGE = 2 * 524_288 * 8  # the unique-id check's largest working set: one hash range (524,288 ids) and its sort
PART_META = 16             # split-column bytes per row of the one part the count reads at a time


def stage(seconds: float, peak: float, disk: float, moved: float, threads: int, **extra: Any) -> dict[str, Any]:
    """A stage dict with the four quantities of :data:`QUANTITIES` and the threads it uses."""
    return {"seconds": float(seconds), "peak_bytes": int(peak), "disk_bytes": int(disk), "moved_bytes": int(moved),
            "threads": int(threads), **extra}


def dedup(n: int, store_bytes: int, part_rows: int, read_mb_s: float) -> dict[str, Any]:
    """The driver's passes before the build: sha256 of every store part and the split count
    (one thread, streaming: its memory does not grow with n; the seq_id dedup of an embed run,
    one hash range at a time, :data:`DEDUP_RANGE`, is in the embed stage)."""
    seconds = START_S + store_bytes / (HASH_MB_S * MB) + n * PART_META / (read_mb_s * MB)
    return stage(seconds, LIGHT_BASE + part_rows * PART_META, 0, store_bytes, 1)


def publish(bundle_bytes: int, index_bytes: int, ids_bytes: int, new_bytes: int | None = None) -> dict[str, Any]:
    """``write_bundle``: hash every file of the version, load it twice with the index
    memory-mapped (as ``serve --mmap`` does) to check that a replica can (peak = the process and
    the id table it reads; ``index_bytes`` stay mapped), and store only the ``new_bytes`` of
    objects the root lacks (all of them on a first publish)."""
    new = bundle_bytes if new_bytes is None else new_bytes
    seconds = PIPELINE_START_S + new / (COPY_MB_S * MB) + bundle_bytes / (HASH_MB_S * MB) \
        + 2 * ids_bytes / (LOAD_MB_S * MB)
    return stage(seconds, PIPELINE_BASE + ids_bytes, new, bundle_bytes + new, 1, mapped_bytes=int(index_bytes))


def transfer(bundle_bytes: int, base: int, night_bytes: int) -> dict[str, Any]:
    """A fresh serving node downloads the whole version; a node that holds last night's
    version downloads only the new objects (``night_bytes``, in ``night_seconds``)."""
    return stage(bundle_bytes / (NET_MB_S * MB), base, bundle_bytes, bundle_bytes, 1, assumed_net_mb_s=NET_MB_S,
                 night_bytes=int(night_bytes), night_seconds=night_bytes / (NET_MB_S * MB))


def cold_start(bundle_bytes: int, private: int, replica: int, per_query_s: float, cpus: int) -> dict[str, Any]:
    """A replica's start: verify (hash) the bundle, map the index, read ids and quantizer into
    its own memory (``private``); ``batch_query_s``: seconds per query of a large batch."""
    seconds = PIPELINE_START_S + bundle_bytes / (HASH_MB_S * MB) + (private / (LOAD_MB_S * MB))
    return stage(seconds, replica, 0, bundle_bytes, cpus, private_bytes=int(private),
                 batch_query_s=per_query_s / max(1, cpus))


def reindex(n: int, d: int, new_fraction: float, add_s: float, check_s: float, head: dict[str, Any],
            pub: dict[str, Any], extend_peak: int, refit_head: bool) -> dict[str, Any]:
    """A +``new_fraction`` night: add the delta with the trained quantizer, verify the store and
    re-tune against the calibration set, whose exact top-10 is updated by a pass over the delta rows
    only (``check_s``, :mod:`genoray.index.calibration`), refit the head only when
    ``refit_head`` (else the current head is carried over), and publish (``pub``: only its new
    objects are stored)."""
    head_s = head["seconds"] - PIPELINE_START_S if refit_head else 0.0  # one process
    seconds = add_s * new_fraction + check_s + head_s + pub["seconds"]
    peak = max(extend_peak, head["peak_bytes"] if refit_head else 0, pub["peak_bytes"])
    return stage(seconds, peak, pub["disk_bytes"], pub["moved_bytes"] + 2 * n * d * 4 * new_fraction, 1,  # the delta read to add it and to update the calibration
                 new_fraction=new_fraction, head_refit=refit_head)
