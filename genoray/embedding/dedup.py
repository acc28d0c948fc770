"""The corpus-wide unique-``seq_id`` check of an embedding job, without holding the ids in the driver.

Each unit writes, when it commits, ``shards/<key>.ids.npy``: the sorted 64-bit hashes
(:func:`id_hashes`) of its rows' ids, recorded with its sha256 in the unit's done marker
(:class:`~genoray.embedding.shards.UnitMarker`). :func:`check_unique_ids` then

1. splits the 64-bit hash space into ``B`` ranges; the task of range ``b`` reads the
   ``[lo, hi)`` slice of every unit's sorted hash file (binary search on a memory map; on
   object storage one ranged read, :func:`read_range`) and returns only the hashes that occur
   more than once with the units holding them (:func:`bucket_candidates`);
2. confirms a candidate by reading the actual ids of the units involved
   (:func:`ids_with_hashes`): two different ids with the same hash are no duplicate.

The driver holds O(units + candidates), a task O(rows / B) hashes; with Ray the tasks run on
the cluster, without it (``use_ray=False``, or a single range) the same functions run here one
range at a time.
Units without a hash file (committed by an older genoray) have their hashes computed from
their shard by the tasks instead.

**The hash files are checked** before any range is read (when the caller gives their recorded
sha256, as the embedding job does): :func:`verify_hash_files` tasks, as many as ranges (at
most one per unit), each stream whole files through sha256, every file once. The check reads
the hash files once more in all (8 bytes per row; the range reads read them once), never once
per range. A corrupt, truncated, missing or swapped hash file stops the check with a
:class:`~genoray.infra.errors.ChecksumError` naming the file and the unit, so a dedup is never
computed from wrong hashes.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from genoray.infra import fs
from genoray.infra.errors import ChecksumError
from genoray.infra.names import safe_join
from genoray.infra.runtime import init_ray
from genoray.sequences.records import SEQ_ID

BUCKET_ROWS = 1 << 19  # hashes one range task holds on average (4 MiB of uint64; its peak is ~5x that)
MAX_BUCKETS = 4096
SPACE = 1 << 64


class DuplicateIdError(ValueError):
    """The same seq_id occurs in more than one record of the corpus."""


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """64-bit hashes (blake2b, little endian) of ``ids`` as uint64, in order."""
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids],
                    dtype=np.uint64)


def sorted_hash_bytes(hashes: np.ndarray) -> bytes:
    """The ``.npy`` form of a unit's hash file: its hashes sorted (a plain array, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.sort(np.asarray(hashes, dtype=np.uint64)), allow_pickle=False)
    return buf.getvalue()


def _in_range(h: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The ``[lo, hi)`` slice of sorted hashes ``h`` (a copy: a memory map is not kept)."""
    a = int(np.searchsorted(h, np.uint64(lo), side="left"))
    b = len(h) if hi >= SPACE else int(np.searchsorted(h, np.uint64(hi), side="left"))
    return np.array(h[a:b])


def read_range(f: BinaryIO, lo: int, hi: int) -> np.ndarray:
    """The hashes in ``[lo, hi)`` of a sorted-hash ``.npy`` file open in ``f`` (seekable), read
    with one ranged read: the hashes are uniform, so their position is estimated from ``lo`` /
    ``hi`` with a margin of 8 standard deviations; when the window misses (not uniform: never
    for blake2b ids) the whole file is read."""
    version = np.lib.format.read_magic(f)
    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                       else np.lib.format.read_array_header_2_0(f))
    if np.dtype(dtype) != np.uint64 or len(shape) != 1:
        raise ValueError(f"not a sorted-hash file (dtype {dtype}, shape {shape})")
    start, m = f.tell(), int(shape[0])
    margin = 8 * math.isqrt(m) + 64
    a = max(0, m * lo // SPACE - margin)
    b = min(m, -(-m * hi // SPACE) + margin)
    f.seek(start + 8 * a)
    h = np.frombuffer(f.read(8 * (b - a)), dtype=np.uint64)
    if (a > 0 and (len(h) == 0 or h[0] >= lo)) or (b < m and (len(h) == 0 or h[-1] < hi)):
        f.seek(start)
        h = np.frombuffer(f.read(8 * m), dtype=np.uint64)
    return _in_range(h, lo, hi)


def _unit_range(shard_dir: str, ids_file: str | None, shard_file: str, lo: int, hi: int) -> np.ndarray:
    """A unit's hashes in ``[lo, hi)``: from its hash file (memory-mapped on a disk, one ranged
    read on object storage), or computed from its shard's ids when it has none."""
    if ids_file is None:
        return _in_range(np.sort(id_hashes(fs.read_table(safe_join(shard_dir, shard_file, shard_dir), [SEQ_ID])
                                           [SEQ_ID].to_pylist())), lo, hi)
    uri = safe_join(shard_dir, ids_file, shard_dir)
    if fs.is_remote(uri):
        with fs.open_input(uri) as f:
            return read_range(f, lo, hi)
    return _in_range(np.load(Path(fs.as_path(uri)), mmap_mode="r", allow_pickle=False), lo, hi)


def bucket_candidates(shard_dir: str, units: list[tuple[str | None, str]], lo: int, hi: int) -> list[tuple[int, list[int]]]:
    """Hashes in ``[lo, hi)`` that occur more than once over ``units`` (``(ids_file, shard_file)``
    each, relative to ``shard_dir``), with the indices of the units holding them (an index
    repeats when a unit holds the hash twice). Holds only this range's slice of every unit."""
    slices, owners = [], []
    for i, (ids_file, shard_file) in enumerate(units):
        h = _unit_range(shard_dir, ids_file, shard_file, lo, hi)
        if len(h):
            slices.append(h)
            owners.append(np.full(len(h), i, dtype=np.int32))
    if not slices:
        return []
    h = np.concatenate(slices)
    own = np.concatenate(owners)
    del slices, owners
    order = np.argsort(h, kind="stable")
    h, own = h[order], own[order]
    eq = h[1:] == h[:-1]
    if not eq.any():
        return []
    member = np.zeros(len(h), bool)
    member[1:] |= eq
    member[:-1] |= eq
    found: dict[int, list[int]] = defaultdict(list)
    for x, o in zip(h[member].tolist(), own[member].tolist()):
        found[x].append(o)
    return sorted(found.items())


def ids_with_hashes(shard_dir: str, shard_file: str, hashes: list[int], batch_rows: int = 1 << 16) -> list[str]:
    """The ids of one unit's shard whose hash is in ``hashes`` (streamed), each as often as it occurs."""
    want = np.array(sorted(set(hashes)), dtype=np.uint64)
    out: list[str] = []
    for b in fs.iter_batches(safe_join(shard_dir, shard_file, shard_dir), [SEQ_ID], batch_rows):
        ids = b.column(0).to_pylist()
        hit = np.isin(id_hashes(ids), want)
        out.extend(i for i, m in zip(ids, hit.tolist()) if m)
    return out


def verify_hash_files(shard_dir: str, checks: list[tuple[int, str, str]]) -> list[tuple[int, str]]:
    """``(unit index, ids_file, recorded sha256)`` each: the ``(index, actual sha256)`` of those
    whose file differs (``"missing"`` when it is gone), each file streamed once."""
    bad = []
    for i, name, want in checks:
        try:
            got = fs.sha256(safe_join(shard_dir, name, shard_dir))
        except FileNotFoundError:
            got = "missing"
        if got != want:
            bad.append((i, got))
    return bad


def _check_hash_files(run: Callable, sd: str, units: list[tuple[str | None, str]], digests: Sequence[str | None],
                      names: Sequence[str] | None, groups: int) -> None:
    """Raise :class:`ChecksumError` unless every unit's hash file has its recorded sha256."""
    checks = [(i, u[0], dg) for i, (u, dg) in enumerate(zip(units, digests, strict=True))
              if u[0] is not None and dg is not None]
    if not checks:
        return
    n = max(1, min(len(checks), groups))
    bad = sorted(x for r in run(verify_hash_files, [(sd, checks[g::n]) for g in range(n)]) for x in r)
    if bad:
        i, got = bad[0]
        unit = names[i] if names else f"unit {i}"
        raise ChecksumError(
            f"{fs.join(sd, str(units[i][0]))}: the sorted id hashes of {unit} have sha256 {got}, its done marker "
            f"records {digests[i]} (corrupt, truncated or swapped; {len(bad)} hash file(s) differ); no duplicate "
            "check was run on them. Delete that unit's .done.json (and its .ids.npy) so the next run embeds it "
            "again, then rerun")


def buckets_for(rows: int) -> int:
    """How many hash ranges a check over ``rows`` ids uses (about :data:`BUCKET_ROWS` each)."""
    return max(1, min(MAX_BUCKETS, math.ceil(rows / BUCKET_ROWS)))


def _bounds(buckets: int) -> list[tuple[int, int]]:
    return [(SPACE * b // buckets, SPACE * (b + 1) // buckets) for b in range(buckets)]


def _runner(use_ray: bool, shard_dir: str) -> Callable[[Callable, list[tuple]], list]:
    """``run(fn, calls)``: the calls as Ray tasks (results gathered as they finish) or in order here."""
    if not use_ray:
        return lambda fn, calls: [fn(*c) for c in calls]
    import ray

    init_ray()
    opts: dict[str, Any] = {"runtime_env": {"env_vars": fs.forwarded_env()}} if fs.is_remote(shard_dir) else {}

    def run(fn: Callable, calls: list[tuple]) -> list:
        f = ray.remote(fn).options(num_cpus=1, max_retries=3, **opts)
        return ray.get([f.remote(*c) for c in calls])

    return run


def find_duplicates(shard_dir: str | Path, units: list[tuple[str | None, str]], rows: int | None = None,
                    buckets: int | None = None, use_ray: bool = False, digests: Sequence[str | None] | None = None,
                    names: Sequence[str] | None = None) -> dict[str, list[int]]:
    """Every seq_id that occurs more than once over ``units`` (``(ids_file or None, shard_file)``,
    relative to ``shard_dir``) -> the indices of the units holding it (once per occurrence).
    ``buckets`` ranges of the hash space (default :func:`buckets_for` ``rows``) are checked as
    separate tasks; the driver sees only candidates and confirmed duplicates. ``digests``: the
    hash files' recorded sha256 (one per unit, ``None`` for none), checked first (see the module
    doc; ``names`` name the units in its error)."""
    sd = str(shard_dir)
    if not units:
        return {}
    b = buckets or buckets_for(rows or 0)
    run = _runner(use_ray and b > 1, sd)  # one range: here (no Ray start for a small or resumed corpus)
    if digests is not None:
        _check_hash_files(run, sd, units, digests, names, b)
    by_unit: dict[int, set[int]] = defaultdict(set)
    for cands in run(bucket_candidates, [(sd, units, lo, hi) for lo, hi in _bounds(b)]):
        for h, owners in cands:
            for o in owners:
                by_unit[o].add(h)
    if not by_unit:
        return {}
    involved = sorted(by_unit)
    found = run(ids_with_hashes, [(sd, units[i][1], sorted(by_unit[i])) for i in involved])
    where: dict[str, list[int]] = defaultdict(list)
    for i, ids in zip(involved, found):
        for sid in ids:
            where[sid].append(i)
    return {sid: owners for sid, owners in sorted(where.items()) if len(owners) > 1}


def check_unique_ids(shard_dir: str | Path, units: list[tuple[str | None, str]], names: list[str],
                     rows: int | None = None, buckets: int | None = None, use_ray: bool = False,
                     digests: Sequence[str | None] | None = None) -> None:
    """Raise :class:`DuplicateIdError` when a seq_id occurs more than once over ``units``; it
    names the first such id, the units (``names``: e.g. input file and unit key) holding it,
    and every file involved; :class:`~genoray.infra.errors.ChecksumError` when a hash file
    differs from its recorded sha256 (``digests``). See :func:`find_duplicates`."""
    dups = find_duplicates(shard_dir, units, rows, buckets, use_ray, digests, names)
    if not dups:
        return
    sid, owners = next(iter(dups.items()))
    files = sorted({names[o] for ows in dups.values() for o in ows})
    held = " and ".join(dict.fromkeys(names[o] for o in owners))
    raise DuplicateIdError(f"{len(dups)} seq_id(s) occur in more than one input unit (or twice in one); e.g. "
                           f"{sid!r} in {held}; files involved: {files[:10]}. Give every record a unique id "
                           "(or read the files in one unit), then rerun")
