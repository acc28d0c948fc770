"""The embedding store written by :func:`genoray.embed.embed_sequences`.

Layout of a store directory::

    store.json                 format_version, encoder spec + fingerprint, dim, status
                               ("complete" | "partial"), counts, failed files, and parts
                               (file, rows, sha256, source file, rejects table)
    encoder.json               the encoder as requested and as fitted (reused on resume)
    shards/<key>.parquet       rows of genoray.schema.embedding_schema(dim)
    shards/<key>.rejects.parquet, shards/<key>.done.json

``store.json`` is written last (atomically), and readers use it, never a glob; each part's
sha256 is verified before it is read. A store may live on object storage (``s3://``, ``gs://``,
see :mod:`genoray.fs`): a unit's shard and rejects table are uploaded before its done marker and
``store.json`` after every marker, so what a reader can see is always complete. ``verified.json`` records size, mtime and sha256 of each
part when it was last verified, so an unchanged part is not hashed again on every open.

This module owns the format both ways: :class:`ShardWriter` commits one unit's shard, rejects
table and done marker, :func:`write_manifest` writes ``store.json`` and
:class:`EmbeddingStore` reads a committed store.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genoray import fs, schema
from genoray.artifacts import JsonDoc, read_json, sha256_file, verify_files, write_json
from genoray.config import CleanPolicy

if TYPE_CHECKING:
    from genoray.sequences.report import ReadReport

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
MANIFEST = "store.json"
VERIFIED = "verified.json"  # size, mtime and sha256 of each part when it was last verified
ENCODER_FILE = "encoder.json"
# float32 embeddings barely compress; zstd on them cost a quarter of the job's CPU time
SHARD_COMPRESSION = {schema.SEQ_ID: "zstd", schema.LABEL: "zstd", schema.DOMAIN: "zstd", schema.SPLIT: "zstd",
                     schema.SEQ_HASH: "zstd", schema.EMBEDDING: "none"}


@dataclass(frozen=True)
class StoreManifest(JsonDoc):
    """``store.json``: what a store holds and how it was made.

    Attributes:
        format_version: :data:`FORMAT_VERSION`.
        encoder / fingerprint / dim: the fitted encoder's spec, its fingerprint and vector size.
        status: ``"complete"`` or ``"partial"`` (some units failed; see ``failed``).
        rows: rows over all parts.
        counts: read / accepted / rejected (by reason) / written (/ windowed / windows).
        failed: ``{"path", "error"}`` of each unit whose file could not be parsed.
        parts: per committed unit: file, rows, sha256, source, row_groups, byte_range, rejects.
        clean: the :class:`~genoray.config.CleanPolicy` the records were cleaned with; ``None``
            in stores written before it was recorded (readers then assume the default).
    """

    format_version: int
    encoder: dict[str, Any]
    fingerprint: str
    dim: int
    status: str
    rows: int
    counts: dict[str, Any]
    failed: list[dict[str, Any]]
    parts: list[dict[str, Any]]
    clean: CleanPolicy | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_manifest(path: str | Path) -> StoreManifest:
    """The manifest of the store at ``path`` (checks the format version, not the files)."""
    mpath = fs.join(path, MANIFEST)
    if not fs.is_file(mpath):
        raise FileNotFoundError(f"{path}: not an embedding store (no {MANIFEST})")
    doc = fs.read_json(mpath)
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{mpath}: unsupported format_version {doc.get('format_version')}")
    return StoreManifest.from_json(doc)


def has_manifest(path: str | Path) -> bool:
    """Whether ``path`` holds a committed store (its ``store.json`` exists)."""
    return fs.is_file(fs.join(path, MANIFEST))


@dataclass
class Embeddings:
    """In-memory slice of a store: ids, labels, domains, splits and the float32 matrix."""

    ids: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    splits: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def vectors_of(table: pa.Table, dim: int) -> np.ndarray:
    """The embedding column of a store table as a float32 ``(n, dim)`` matrix."""
    emb = table[schema.EMBEDDING].combine_chunks()
    return emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


class EmbeddingStore:
    """A committed, verified embedding store (see the module docstring). ``path`` is a local
    directory or an ``s3://`` / ``gs://`` prefix (then ``path`` stays a string and parts are
    streamed from the object store; their verification record is kept in the node-local cache)."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path: Any = fs.as_path(path)
        self.manifest = read_manifest(self.path)
        self.hashed = 0
        files = {p["file"]: p["sha256"] for p in self.manifest.parts}
        if verify and fs.is_remote(self.path):
            self.hashed = _verify_remote(str(self.path), files)
        elif verify:  # files unchanged (size, mtime) since their last verification are not re-hashed
            self.hashed = verify_files(self.path, files, record=Path(self.path) / VERIFIED)

    @property
    def dim(self) -> int:
        """Vector size."""
        return int(self.manifest.dim)

    @property
    def encoder_spec(self) -> dict[str, Any]:
        """The fitted encoder's spec (:func:`genoray.encoders.encoder_from_spec` rebuilds it)."""
        return self.manifest.encoder

    @property
    def fingerprint(self) -> str:
        """The encoder fingerprint every vector was made with."""
        return self.manifest.fingerprint

    @property
    def rows(self) -> int:
        """Rows over all parts."""
        return int(self.manifest.rows)

    @property
    def clean_policy(self) -> CleanPolicy | None:
        """The cleaning the records went through; ``None`` for a store written before it was
        recorded (logged once per store: consumers then clean with the default policy)."""
        if self.manifest.clean is None:
            log.warning("%s: store records no CleanPolicy (written by an older genoray); "
                        "queries will be cleaned with the default policy", self.path)
        return self.manifest.clean

    def source_records(self, ids) -> dict[str, tuple[str, str | None]] | None:
        """``{seq_id: (sequence, meta JSON)}`` for the wanted ``ids``, re-read (streamed) from the
        store's source files with the reading settings it was embedded with; ``None`` when a
        source file is gone."""
        from genoray.config import ReadConfig
        from genoray.sequences import iter_sequences

        sources = sorted({p.get("source") for p in self.manifest.get("parts", []) if p.get("source")})
        if not sources or not all(fs.is_file(s) for s in sources):
            return None
        clean = self.manifest.clean
        wanted = {str(i) for i in ids}
        found: dict[str, tuple[str, str | None]] = {}
        for batch in iter_sequences(sources, ReadConfig(clean=clean) if clean is not None else None):
            for sid, seq, meta in zip(batch["seq_id"].to_pylist(), batch["sequence"].to_pylist(),
                                      batch["meta"].to_pylist()):
                if sid in wanted:
                    found[sid] = (seq, meta)
        return found

    def iter_tables(self, columns: list[str] | None = None):
        """Stream the parts one at a time (bounded memory)."""
        for p in self.manifest.parts:
            yield fs.read_table(fs.join(self.path, p["file"]), columns=columns)

    def table(self, split: str | None = None) -> pa.Table:
        """Rows (of one split, or all) as one Arrow table."""
        parts = [t if split is None else t.filter(pc.equal(t[schema.SPLIT], split)) for t in self.iter_tables()]
        return pa.concat_tables(parts) if parts else schema.embedding_schema(self.dim).empty_table()

    def load(self, split: str | None = None) -> Embeddings:
        """Load rows (of one split, or all) into memory."""
        t = self.table(split)

        def col(name: str) -> np.ndarray:
            return np.array(t[name].to_pylist(), dtype=object)

        return Embeddings(col(schema.SEQ_ID), col(schema.LABEL), col(schema.DOMAIN), col(schema.SPLIT),
                          vectors_of(t, self.dim))


def _verify_remote(uri: str, files: dict[str, str]) -> int:
    """:func:`~genoray.artifacts.verify_files` for a store on object storage: objects whose size
    and mtime match the node-local record of their last verification are not re-read."""
    from genoray.artifacts import ChecksumError

    record = fs.cache_dir("stores", uri) / VERIFIED
    try:
        seen = read_json(record) if record.is_file() else {}
    except (OSError, ValueError):
        seen = {}
    hashed, fresh = 0, {}
    for rel, expected in sorted(files.items()):
        obj = fs.join(uri, rel)
        kind, size, mtime = fs.info(obj)
        if kind != "file":
            raise ChecksumError(f"{obj}: missing (listed in manifest)")
        key = {"size": size, "mtime_ns": mtime, "sha256": expected}
        if seen.get(rel) != key:
            got = fs.sha256(obj)
            hashed += 1
            if got != expected:
                raise ChecksumError(f"{obj}: sha256 {got[:16]}... does not match manifest {expected[:16]}...")
        fresh[rel] = key
    if fresh != seen:
        try:
            write_json(record, fresh)
        except OSError:
            pass
    return hashed


# -- writing ----------------------------------------------------------------------------
def shard_is_done(shard_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The done marker of a unit if it and its shard are intact, else ``None``. On object
    storage the shard is checked by its size (recorded in the marker; objects are written
    whole, and the sha256 is verified when the store is opened) rather than re-downloaded."""
    marker = fs.join(shard_dir, f"{key}.done.json")
    try:
        if not fs.is_file(marker):
            return None
        done = fs.read_json(marker)
        shard = fs.join(shard_dir, done["file"])
        if fs.is_remote(shard_dir) and "bytes" in done:
            kind, size, _ = fs.info(shard)
            return done if kind == "file" and size == done["bytes"] else None
        if fs.sha256(shard) != done["sha256"]:
            return None
    except (OSError, ValueError, KeyError):
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
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        """Append store rows (:func:`genoray.schema.embedding_schema`)."""
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, table.schema, compression=SHARD_COMPRESSION)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        """Finish the temp file (an empty shard when no row was written) and fsync it."""
        if self._writer is None:  # no accepted record: still commit an empty shard
            self._writer = pq.ParquetWriter(self.tmp, schema.embedding_schema(self.dim),
                                            compression=SHARD_COMPRESSION)
        self._writer.close()
        self._writer = None
        _fsync(self.tmp)

    def abort(self) -> None:
        """Drop what was written (the unit failed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)

    def commit(self, report: ReadReport, fields: dict[str, Any], where: str) -> dict[str, Any]:
        """Publish the closed shard with its rejects table and done marker; returns the marker.

        ``fields`` (key, path, provenance) go into the marker with the counts of ``report``.
        Raises :class:`~genoray.errors.InvariantError` when the rows written differ from the
        rows the read yielded.
        """
        from genoray.errors import InvariantError

        key, shard_dir = self.key, self.shard_dir
        if report.examples:
            rej = pa.table({"path": [r.path for r in report.examples], "record": [r.record for r in report.examples],
                            "seq_id": [r.seq_id for r in report.examples],
                            "reason": [r.reason for r in report.examples]})
            if self.remote:
                local_rej = self.tmp.with_suffix(".rejects")
                pq.write_table(rej, local_rej)
                fs.upload(local_rej, fs.join(shard_dir, f"{key}.rejects.parquet"))
                local_rej.unlink()
            else:
                pq.write_table(rej, Path(shard_dir) / f"{key}.rejects.parquet")
        name = f"{key}.parquet"
        digest, nbytes = sha256_file(self.tmp), self.tmp.stat().st_size
        if self.remote:  # uploaded whole before the marker that makes the unit visible
            fs.upload(self.tmp, fs.join(shard_dir, name))
            self.tmp.unlink()
        else:
            os.replace(self.tmp, Path(shard_dir) / name)
        done = {
            **{k: fields[k] for k in ("key", "path", "row_groups", "byte_range", "status")},
            "file": name, "sha256": digest, "bytes": nbytes, "rows": self.rows,
            "read": report.read, "accepted": report.accepted, "rejected_by_reason": dict(report.rejected),
            "windowed": report.windowed, "windows": report.windows,
            "windows_rejected_by_reason": dict(report.windows_rejected),
            "rejects_file": f"{key}.rejects.parquet" if report.examples else None,
            **{k: v for k, v in fields.items() if k not in ("key", "path", "row_groups", "byte_range", "status")},
        }
        if self.rows != report.rows:
            raise InvariantError(f"{where}: wrote {self.rows} rows but the read yielded {report.rows}")
        fs.write_json(fs.join(shard_dir, f"{key}.done.json"), done)
        return done


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_manifest(out: str | Path, manifest: StoreManifest) -> None:
    """Write ``store.json`` (last, atomically): it lists exactly the committed units' shards."""
    fs.write_json(fs.join(out, MANIFEST), manifest.to_json())


def part_entry(done: dict[str, Any]) -> dict[str, Any]:
    """The ``parts`` entry of ``store.json`` for a unit's done marker."""
    return {"file": f"shards/{done['file']}", "rows": done["rows"], "sha256": done["sha256"], "source": done["path"],
            "row_groups": done["row_groups"], "byte_range": done.get("byte_range"),
            "rejects": f"shards/{done['rejects_file']}" if done.get("rejects_file") else None}


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
