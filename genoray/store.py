"""The embedding store: Parquet parts plus a ``store.json`` manifest.

Layout of a store directory::

    store.json          format_version, encoder spec + fingerprint, dim, counts, parts (file, rows, sha256)
    part-00000.parquet  rows of genoray.schema.embedding_schema(dim)
    ...

A store is written to a temporary sibling directory and renamed into place only when complete,
so a reader never sees half a store. Readers use the manifest, never a glob, and verify each
part's sha256 before reading it.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoray import schema
from genoray.artifacts import read_json, sha256_file, verify_files, write_json

FORMAT_VERSION = 1
MANIFEST = "store.json"


class StoreWriter:
    """Append embedding batches into parts of at most ``rows_per_part`` rows; ``commit`` publishes."""

    def __init__(self, out_dir: str | Path, encoder_spec: dict[str, Any], fingerprint: str, dim: int,
                 rows_per_part: int = 100_000):
        self.out_dir = Path(out_dir)
        if (self.out_dir / MANIFEST).exists():
            raise FileExistsError(f"{self.out_dir}: an embedding store already exists here; choose a new directory")
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self.spec, self.fingerprint, self.dim = encoder_spec, fingerprint, dim
        self.schema = schema.embedding_schema(dim)
        self.rows_per_part = rows_per_part
        self.parts: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_part = 0
        self.rows = 0

    def _open_part(self) -> None:
        name = f"part-{len(self.parts):05d}.parquet"
        self.parts.append({"file": name, "rows": 0})
        self._writer = pq.ParquetWriter(self.tmp / name, self.schema, compression="zstd")
        self._rows_in_part = 0

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.parts[-1]["rows"] = self._rows_in_part

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._rows_in_part >= self.rows_per_part:
                self._close_part()
                self._open_part()
            take = min(self.rows_per_part - self._rows_in_part, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take))
            self._rows_in_part += take
            self.rows += take
            offset += take

    def commit(self, counts: dict[str, Any]) -> "EmbeddingStore":
        self._close_part()
        for part in self.parts:
            part["sha256"] = sha256_file(self.tmp / part["file"])
        write_json(self.tmp / MANIFEST, {
            "format_version": FORMAT_VERSION,
            "encoder": self.spec,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "rows": self.rows,
            "counts": counts,
            "parts": self.parts,
        })
        if self.out_dir.exists():
            if any(self.out_dir.iterdir()):
                raise FileExistsError(f"{self.out_dir}: not empty; refusing to overwrite")
            self.out_dir.rmdir()
        self.tmp.rename(self.out_dir)
        return EmbeddingStore(self.out_dir)

    def abort(self) -> None:
        self._close_part()
        shutil.rmtree(self.tmp, ignore_errors=True)


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

    def select(self, mask: np.ndarray) -> "Embeddings":
        return Embeddings(self.ids[mask], self.labels[mask], self.domains[mask], self.splits[mask], self.vectors[mask])


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

    def table(self) -> pa.Table:
        parts = [pq.read_table(self.path / p["file"]) for p in self.manifest["parts"]]
        if not parts:
            return schema.embedding_schema(self.dim).empty_table()
        return pa.concat_tables(parts)

    def load(self, split: str | None = None) -> Embeddings:
        """Load rows (of one split, or all) into memory."""
        t = self.table()
        if split is not None:
            t = t.filter(pa.compute.equal(t[schema.SPLIT], split))
        emb = t[schema.EMBEDDING].combine_chunks()
        vectors = emb.values.to_numpy(zero_copy_only=False).reshape(-1, self.dim).astype(np.float32, copy=False)

        def col(name: str) -> np.ndarray:
            return np.array(t[name].to_pylist(), dtype=object)

        return Embeddings(col(schema.SEQ_ID), col(schema.LABEL), col(schema.DOMAIN), col(schema.SPLIT), vectors)
