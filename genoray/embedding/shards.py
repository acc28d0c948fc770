"""The files of one unit of an embedding job, under ``<store>/shards/``, and their commit protocol::

    <key>.parquet          the unit's store rows (:func:`genoray.embedding.store.embedding_schema`)
    <key>.rejects.parquet  every rejected record: path, record, seq_id, reason
    <key>.done.json        :class:`UnitMarker`: counts, sha256 and provenance; written last, so
                           it marks a finished unit

:class:`ShardWriter` writes the rows to a node-local temp file and :meth:`ShardWriter.commit`
publishes the shard and its rejects table before the marker; :func:`shard_is_done` is what a
rerun asks before skipping a unit; :func:`committed_units` lists what a store holds (a rerun
checks that it would not drop any); :func:`collect_garbage` removes what no unit of the plan
owns (changed inputs, temp files of killed runs).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Container
from dataclasses import field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genoray.embedding.dedup import id_hashes, sorted_hash_bytes
from genoray.embedding.store import (
    DOMAIN,
    EMBEDDING,
    LABEL,
    SEQ_HASH,
    SEQ_ID,
    SPLIT,
    FailedUnit,
    StorePart,
    embedding_schema,
)
from genoray.infra import fs
from genoray.infra.artifacts import sha256_file
from genoray.infra.documents import from_json, read_document, record, to_json, write_document
from genoray.infra.errors import FormatError, InvariantError
from genoray.infra.names import safe_join
from genoray.sequences.report import ReadReport

SHARDS = "shards"  # the directory of a store that holds the units' files
# float32 embeddings barely compress; zstd on them cost a quarter of the job's CPU time
SHARD_COMPRESSION = {SEQ_ID: "zstd", LABEL: "zstd", DOMAIN: "zstd", SPLIT: "zstd", SEQ_HASH: "zstd", EMBEDDING: "none"}


@record
class UnitMarker:
    """``<key>.done.json``: a committed unit (its counts add up: ``read == accepted +
    rejected``, ``rows == accepted - windowed + windows``) and where and how long it ran.
    ``ids_file`` / ``ids_sha256``: its sorted id hashes (:mod:`genoray.embedding.dedup`);
    ``split_rows``: rows per split name (rows without a split are not listed). All three are
    ``None`` in markers of an older genoray."""

    key: str
    path: str
    file: str
    sha256: str
    bytes: int
    rows: int
    read: int
    accepted: int
    rejected_by_reason: dict[str, int]
    row_groups: tuple[int, ...] | None = None
    byte_range: tuple[int, int] | None = None
    status: Literal["done"] = "done"
    windowed: int = 0
    windows: int = 0
    windows_rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejects_file: str | None = None
    started_at: float | None = None
    seconds: float | None = None
    worker_pid: int | None = None
    node: str | None = None
    ray_node: str | None = None
    ids_file: str | None = None
    ids_sha256: str | None = None
    split_rows: dict[str, int] | None = None

    def part(self) -> StorePart:
        """The ``parts`` entry of ``store.json`` for this unit."""
        return StorePart(file=f"{SHARDS}/{self.file}", rows=self.rows, sha256=self.sha256, source=self.path,
                         row_groups=self.row_groups, byte_range=self.byte_range,
                         rejects=f"{SHARDS}/{self.rejects_file}" if self.rejects_file else None,
                         split_rows=self.split_rows)


@record
class UnitFailure:
    """A unit whose file could not be parsed (nothing of it was committed)."""

    key: str
    path: str
    error: str
    status: Literal["failed"] = "failed"

    def failed(self) -> FailedUnit:
        """The ``failed`` entry of ``store.json``."""
        return FailedUnit(path=self.path, error=self.error)


def unit_result(doc: dict) -> UnitMarker | UnitFailure:
    """A unit's result from its JSON form (as a Ray worker sends it back)."""
    if doc.get("status") == "failed":
        return from_json(UnitFailure, doc, f"unit {doc.get('key')}")
    return from_json(UnitMarker, doc, f"unit {doc.get('key')}")


def unit_json(result: UnitMarker | UnitFailure) -> dict:
    """The JSON form of a unit's result."""
    return to_json(result)


def shard_is_done(shard_dir: str | Path, key: str) -> UnitMarker | None:
    """The done marker of a unit if it and its shard are intact, else ``None``. On object
    storage the shard is checked by its size (recorded in the marker; objects are written
    whole, and the sha256 is verified when the store is opened) rather than re-downloaded."""
    marker = fs.join(shard_dir, f"{key}.done.json")
    try:
        if not fs.is_file(marker):
            return None
        done = read_document(UnitMarker, marker)
        shard = safe_join(shard_dir, done.file, marker)
        if fs.is_remote(shard_dir):
            kind, size, _ = fs.info(shard)
            ids_ok = done.ids_file is None or fs.is_file(safe_join(shard_dir, done.ids_file, marker))
            return done if kind == "file" and size == done.bytes and ids_ok else None
        if fs.sha256(shard) != done.sha256:
            return None
        if done.ids_file is not None and fs.sha256(safe_join(shard_dir, done.ids_file, marker)) != done.ids_sha256:
            return None
    except (OSError, FormatError):  # a marker of an older genoray or a damaged one: redo the unit
        return None
    return done


class ShardWriter:
    """Writes one unit's rows to a temp file; :meth:`commit` publishes the shard, its rejects
    table and its done marker (written last, so it marks a finished unit); :meth:`abort`
    removes the temp file."""

    def __init__(self, shard_dir: str | Path, key: str, dim: int):
        self.shard_dir, self.key, self.dim = fs.as_path(shard_dir), key, dim
        self.remote = fs.is_remote(self.shard_dir)  # then the shard is written locally and uploaded
        tmp_dir = Path(tempfile.gettempdir()) if self.remote else Path(self.shard_dir)
        self.tmp = tmp_dir / f".{key}.{os.getpid()}.tmp"
        self.rows = 0
        self._hashes: list[np.ndarray] = []  # 8 bytes per row of this unit, written sorted at commit
        self._splits: dict[str, int] = {}
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        """Append store rows (:func:`genoray.embedding.store.embedding_schema`)."""
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, table.schema, compression=SHARD_COMPRESSION)
        self._writer.write_table(table)
        self.rows += table.num_rows
        self._hashes.append(id_hashes(table[SEQ_ID].to_pylist()))
        for v in pc.value_counts(table[SPLIT]).to_pylist():
            if v["values"] is not None:
                self._splits[v["values"]] = self._splits.get(v["values"], 0) + int(v["counts"])

    def close(self) -> None:
        """Finish the temp file (an empty shard when no row was written) and fsync it."""
        if self._writer is None:  # no accepted record: still commit an empty shard
            self._writer = pq.ParquetWriter(self.tmp, embedding_schema(self.dim), compression=SHARD_COMPRESSION)
        self._writer.close()
        self._writer = None
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())

    def abort(self) -> None:
        """Drop what was written (the unit failed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)

    def _put(self, local: Path, name: str) -> None:
        """Move a finished local file to ``shard_dir/name`` (an upload on object storage)."""
        if self.remote:
            fs.upload(local, fs.join(self.shard_dir, name))
            local.unlink()
        else:
            os.replace(local, Path(self.shard_dir) / name)

    def commit(self, report: ReadReport, provenance: dict, unit: dict) -> UnitMarker:
        """Publish the closed shard with its rejects table and done marker; returns the marker.

        ``unit``: the unit (key, path, row groups, byte range); ``provenance``: when, how long,
        where it ran. Raises :class:`~genoray.infra.errors.InvariantError` when the rows
        written differ from the rows the read yielded.
        """
        if self.rows != report.rows:
            raise InvariantError(f"{unit['path']}: wrote {self.rows} rows but the read yielded {report.rows}")
        key = self.key
        rejects = None
        if report.examples:
            rejects = f"{key}.rejects.parquet"
            local = self.tmp.with_suffix(".rejects")
            pq.write_table(pa.table({"path": [r.path for r in report.examples],
                                     "record": [r.record for r in report.examples],
                                     "seq_id": [r.seq_id for r in report.examples],
                                     "reason": [r.reason for r in report.examples]}), local)
            self._put(local, rejects)
        ids_name, ids_local = f"{key}.ids.npy", self.tmp.with_suffix(".ids")
        ids_local.write_bytes(sorted_hash_bytes(np.concatenate(self._hashes) if self._hashes
                                                else np.zeros(0, np.uint64)))
        ids_digest = sha256_file(ids_local)
        self._put(ids_local, ids_name)
        name = f"{key}.parquet"
        digest, nbytes = sha256_file(self.tmp), self.tmp.stat().st_size
        self._put(self.tmp, name)  # the shard is whole before the marker that makes the unit visible
        done = UnitMarker(key=key, path=unit["path"], row_groups=unit["row_groups"], byte_range=unit.get("byte_range"),
                          file=name, sha256=digest, bytes=nbytes, rows=self.rows, read=report.read,
                          accepted=report.accepted, rejected_by_reason=dict(report.rejected),
                          windowed=report.windowed, windows=report.windows,
                          windows_rejected_by_reason=dict(report.windows_rejected), rejects_file=rejects,
                          ids_file=ids_name, ids_sha256=ids_digest, split_rows=dict(sorted(self._splits.items())),
                          **provenance)
        write_document(fs.join(self.shard_dir, f"{key}.done.json"), done)
        return done


def committed_units(shard_dir: str | Path, skip: Container[str] = ()) -> dict[str, UnitMarker | None]:
    """The units a store has committed, less the keys in ``skip``: key -> done marker
    (``None`` when it cannot be read). Only those markers are read (one listing, no hashing)."""
    out: dict[str, UnitMarker | None] = {}
    for name in fs.list_files(shard_dir, recursive=False):
        key = name.split(".")[0]
        if not name.endswith(".done.json") or name.startswith(".") or key in skip:
            continue
        try:
            out[key] = read_document(UnitMarker, fs.join(shard_dir, name))
        except (OSError, FormatError):
            out[key] = None
    return out


def collect_garbage(shard_dir: str | Path, keep: set[str]) -> None:
    """Remove shards of units no longer in the plan (changed inputs) and stale temp files."""
    if fs.is_remote(shard_dir):
        for name in fs.list_files(shard_dir, recursive=False):
            if name.split(".")[0] not in keep:
                fs.delete(fs.join(shard_dir, name))
        return
    for f in Path(shard_dir).iterdir():
        if f.name.startswith(".") or f.name.split(".")[0] not in keep:  # temp files of killed runs
            f.unlink(missing_ok=True)
