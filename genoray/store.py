"""The embedding store written by :func:`genoray.embed.embed_sequences`.

Layout of a store directory::

    store.json                 format_version, encoder spec + fingerprint, dim, status
                               ("complete" | "partial"), counts, failed files, and parts
                               (file, rows, sha256, source file, rejects table)
    encoder.json               the encoder as requested and as fitted (reused on resume)
    shards/<key>.parquet       rows of genoray.schema.embedding_schema(dim)
    shards/<key>.rejects.parquet, shards/<key>.done.json

``store.json`` is written last (atomically), and readers use it, never a glob; each part's
sha256 is verified before it is read.

This module owns the format both ways: :class:`ShardWriter` commits one unit's shard, rejects
table and done marker, :func:`write_manifest` writes ``store.json`` and
:class:`EmbeddingStore` reads a committed store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genoray import schema
from genoray.artifacts import read_json, sha256_file, verify_files, write_json

if TYPE_CHECKING:
    from genoray.sequences.report import ReadReport

FORMAT_VERSION = 2
MANIFEST = "store.json"
# float32 embeddings barely compress; zstd on them cost a quarter of the job's CPU time
SHARD_COMPRESSION = {schema.SEQ_ID: "zstd", schema.LABEL: "zstd", schema.DOMAIN: "zstd", schema.SPLIT: "zstd",
                     schema.SEQ_HASH: "zstd", schema.EMBEDDING: "none"}


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
    return emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


class EmbeddingStore:
    """A committed, verified embedding store (see the module docstring)."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"{self.path}: not an embedding store (no {MANIFEST})")
        self.manifest = read_json(mpath)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{mpath}: unsupported format_version {self.manifest.get('format_version')}")
        if verify:
            verify_files(self.path, {p["file"]: p["sha256"] for p in self.manifest["parts"]})

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def iter_tables(self, columns: list[str] | None = None):
        """Stream the parts one at a time (bounded memory)."""
        for p in self.manifest["parts"]:
            yield pq.read_table(self.path / p["file"], columns=columns)

    def table(self, split: str | None = None) -> pa.Table:
        parts = [t if split is None else t.filter(pc.equal(t[schema.SPLIT], split)) for t in self.iter_tables()]
        return pa.concat_tables(parts) if parts else schema.embedding_schema(self.dim).empty_table()

    def load(self, split: str | None = None) -> Embeddings:
        """Load rows (of one split, or all) into memory."""
        t = self.table(split)

        def col(name: str) -> np.ndarray:
            return np.array(t[name].to_pylist(), dtype=object)

        return Embeddings(col(schema.SEQ_ID), col(schema.LABEL), col(schema.DOMAIN), col(schema.SPLIT),
                          vectors_of(t, self.dim))


# -- writing ----------------------------------------------------------------------------
def shard_is_done(shard_dir: Path, key: str) -> dict[str, Any] | None:
    """The done marker of a unit if it and its shard are intact, else ``None``."""
    marker = shard_dir / f"{key}.done.json"
    if not marker.is_file():
        return None
    try:
        done = read_json(marker)
        if sha256_file(shard_dir / done["file"]) != done["sha256"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return done


class ShardWriter:
    """Writes one unit's rows to a temp file; :meth:`commit` publishes the shard, its rejects
    table and its done marker (written last, so it marks a finished unit); :meth:`abort`
    removes the temp file."""

    def __init__(self, shard_dir: Path, key: str, dim: int):
        self.shard_dir, self.key, self.dim = Path(shard_dir), key, dim
        self.tmp = self.shard_dir / f".{key}.{os.getpid()}.tmp"
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
            pq.write_table(rej, shard_dir / f"{key}.rejects.parquet")
        final = shard_dir / f"{key}.parquet"
        os.replace(self.tmp, final)
        done = {
            **{k: fields[k] for k in ("key", "path", "row_groups", "byte_range", "status")},
            "file": final.name, "sha256": sha256_file(final), "rows": self.rows,
            "read": report.read, "accepted": report.accepted, "rejected_by_reason": dict(report.rejected),
            "windowed": report.windowed, "windows": report.windows,
            "windows_rejected_by_reason": dict(report.windows_rejected),
            "rejects_file": f"{key}.rejects.parquet" if report.examples else None,
            **{k: v for k, v in fields.items() if k not in ("key", "path", "row_groups", "byte_range", "status")},
        }
        if self.rows != report.rows:
            raise InvariantError(f"{where}: wrote {self.rows} rows but the read yielded {report.rows}")
        write_json(shard_dir / f"{key}.done.json", done)
        return done


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_manifest(out: Path, spec: dict[str, Any], fp: str, dim: int, committed: list[dict[str, Any]],
                   report: Any) -> None:
    """Write ``store.json`` (last, atomically) listing exactly the ``committed`` units' shards."""
    write_json(out / MANIFEST, {
        "format_version": FORMAT_VERSION,
        "encoder": spec, "fingerprint": fp, "dim": dim,
        "status": report.status,
        "rows": report.written,
        "counts": {k: v for k, v in report.to_dict().items() if k in ("read", "accepted", "rejected", "rejected_by_reason", "written", "windowed", "windows")},
        "failed": report.failed,
        "parts": [{"file": f"shards/{d['file']}", "rows": d["rows"], "sha256": d["sha256"], "source": d["path"],
                   "row_groups": d["row_groups"], "byte_range": d.get("byte_range"),
                   "rejects": f"shards/{d['rejects_file']}" if d.get("rejects_file") else None} for d in committed],
    })


def collect_garbage(shard_dir: Path, keep: set[str]) -> None:
    """Remove shards of units no longer in the plan (changed inputs) and stale temp files."""
    for f in shard_dir.iterdir():
        if f.name.startswith(".") or f.name.split(".")[0] not in keep:  # temp files of killed runs
            f.unlink(missing_ok=True)
